"""Task-adaptive pretraining (`tapt_epochs`): masked-LM training of the base on the training inputs
before fine-tuning (Gururangan et al. 2020, "Don't stop pretraining")."""

from __future__ import annotations

import math
import sys

import numpy as np

from stancewatch.model.encoding import InputEncoder, collate
from stancewatch.training.config import TrainConfig

IGNORE = -100


def adapt_encoder(network, encoded, encoder: InputEncoder, cfg: TrainConfig, device, progress: bool = False) -> dict:
    """Task-adaptive pretraining: continue masked-LM training of the base on the training inputs.

    The base's masked-LM head is used when it ships one; otherwise (all-MiniLM-L6-v2, a sentence
    embedding model, has none) transformers initialises it, tied to the token embeddings. 15% of the
    non-special tokens are chosen; 80% of those become the mask token, 10% a random token, 10% stay.
    The adapted encoder weights are copied into `network.encoder`. Returns {"steps", "loss"}.
    """
    import torch
    from transformers import AutoModelForMaskedLM

    from stancewatch.training.loop import linear_schedule, to_device

    added = encoder.tokenizer.get_added_tokens_decoder()
    specials = {i for i, tok in added.items() if tok.special}
    mask_id = next((i for i, tok in added.items() if tok.content.strip("[]<>").lower() == "mask"), None)
    if mask_id is None:
        raise ValueError("tapt_epochs > 0 needs a tokenizer with a mask token ([MASK] or <mask>)")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a base without a masked-LM head is expected here: no load report
    try:
        mlm = AutoModelForMaskedLM.from_pretrained(cfg.base_path, local_files_only=True)
    except ValueError as exc:
        raise ValueError(f"tapt_epochs > 0 needs a base with a masked-LM architecture: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    mlm.to(device).train()
    # The masked-LM head is the one child module beside the encoder (BERT's `cls`, RoBERTa's `lm_head`).
    heads = [m for _, m in mlm.named_children() if m is not mlm.base_model]
    head = heads[0] if len(heads) == 1 else None
    vocab = mlm.get_input_embeddings().num_embeddings
    gen = np.random.default_rng(cfg.seed)
    batch_size = 32
    steps_per_epoch = math.ceil(len(encoded) / batch_size)
    total = steps_per_epoch * cfg.tapt_epochs
    warmup = max(1, int(0.06 * total))
    optimizer = torch.optim.AdamW(mlm.parameters(), lr=cfg.tapt_learning_rate, weight_decay=0.01)
    scheduler = linear_schedule(optimizer, warmup, total)
    losses = []
    for _ in range(cfg.tapt_epochs):
        order = gen.permutation(len(encoded))
        for b in range(0, len(order), batch_size):
            batch = collate([encoded[i] for i in order[b : b + batch_size]], encoder.pad_id)
            ids = batch["input_ids"].copy()
            candidates = batch["attention_mask"].astype(bool) & ~np.isin(ids, list(specials))
            chosen = candidates & (gen.random(ids.shape) < 0.15)
            if not chosen.any():
                continue
            labels = np.where(chosen, ids, IGNORE)
            roll = gen.random(ids.shape)
            ids[chosen & (roll < 0.8)] = mask_id
            swap = chosen & (roll >= 0.8) & (roll < 0.9)
            ids[swap] = gen.integers(0, vocab, size=int(swap.sum()))
            inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"], "labels": labels}
            if "token_type_ids" in batch and mlm.config.type_vocab_size > 1:
                inputs["token_type_ids"] = batch["token_type_ids"]
            inputs = to_device(inputs, device)
            if head is None:
                loss = mlm(**inputs).loss
            else:  # the vocabulary projection only where a token was chosen: ~7x less work than everywhere
                labels_t = inputs.pop("labels")
                hidden = mlm.base_model(**inputs).last_hidden_state
                picked = labels_t != IGNORE
                loss = torch.nn.functional.cross_entropy(head(hidden[picked]), labels_t[picked])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        if progress:
            print(f"tapt epoch: masked-LM loss {np.mean(losses[-steps_per_epoch:]):.4f}", file=sys.stderr)
    missing, unexpected = network.encoder.load_state_dict(mlm.base_model.state_dict(), strict=False)
    if unexpected or any("pooler" not in k for k in missing):
        raise ValueError(f"adapted encoder does not match the base: missing {missing}, unexpected {unexpected}")
    return {"steps": len(losses), "loss": float(np.mean(losses[-steps_per_epoch:])) if losses else None}
