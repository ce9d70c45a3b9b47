"""Turning (sentence, context) pairs into model inputs, with numpy only.

Training, the torch predictor and the optimised runtimes all share this code, so a sentence is
encoded the same way everywhere. It needs the `tokenizers` package but neither torch nor
transformers. Layout: ``[CLS] sentence [SEP] context [SEP]``; the context (the preceding sentence)
is cut from its start when space runs out, the sentence from its end, and a sentence cut short is
reported as truncated.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


@dataclass
class Encoded:
    """One encoded input; `pool_mask` marks the sentence's own tokens (segment A)."""

    input_ids: list[int]
    type_ids: list[int]
    pool_mask: list[int]
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


class InputEncoder:
    """Wraps a `tokenizers.Tokenizer` loaded from a model folder's tokenizer.json."""

    def __init__(self, tokenizer: Tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = int(max_length)
        processor = tokenizer.post_processor
        self._specials_single = processor.num_special_tokens_to_add(False) if processor else 0
        self._specials_pair = processor.num_special_tokens_to_add(True) if processor else 0
        if self.max_length <= self._specials_pair + 2:
            raise ValueError(f"max_length {max_length} leaves no room for text")
        self.pad_id = tokenizer.token_to_id(tokenizer.padding["pad_token"]) if tokenizer.padding else None
        if self.pad_id is None:
            for candidate in ("[PAD]", "<pad>", "<|pad|>"):
                if tokenizer.token_to_id(candidate) is not None:
                    self.pad_id = tokenizer.token_to_id(candidate)
                    break
        if self.pad_id is None:
            self.pad_id = 0

    @classmethod
    def from_folder(cls, folder: str | Path, max_length: int) -> InputEncoder:
        return cls(Tokenizer.from_file(str(Path(folder) / "tokenizer.json")), max_length)

    def encode(self, sentences: Sequence[str], contexts: Sequence[str | None] | None = None) -> list[Encoded]:
        sent_encs = self.tokenizer.encode_batch(list(sentences), add_special_tokens=False)
        if contexts is None:
            contexts = [None] * len(sentences)
        with_ctx = [i for i, c in enumerate(contexts) if c]
        ctx_encs = dict(
            zip(with_ctx, self.tokenizer.encode_batch([contexts[i] for i in with_ctx], add_special_tokens=False))
        )
        out = []
        for i, enc in enumerate(sent_encs):
            ctx = ctx_encs.get(i)
            if ctx is None or len(ctx.ids) == 0:
                budget = self.max_length - self._specials_single
                truncated = len(enc.ids) > budget
                if truncated:
                    enc.truncate(budget, direction="right")
                full = self.tokenizer.post_process(enc, None, add_special_tokens=True)
            else:
                budget = self.max_length - self._specials_pair
                truncated = len(enc.ids) > budget - 1  # keep at least one context token
                if truncated:
                    enc.truncate(budget - 1, direction="right")
                ctx_budget = budget - len(enc.ids)
                if len(ctx.ids) > ctx_budget:
                    ctx.truncate(ctx_budget, direction="left")
                full = self.tokenizer.post_process(enc, ctx, add_special_tokens=True)
            # Pool over the sentence and its own special tokens; the context only informs attention.
            # Pair templates (BERT, RoBERTa, MPNet...) begin with the single-sentence template.
            n_own = min(len(full.ids), len(enc.ids) + self._specials_single)
            pool = [1] * n_own + [0] * (len(full.ids) - n_own)
            out.append(Encoded(list(full.ids), list(full.type_ids), pool, truncated))
        return out


def collate(items: Sequence[Encoded], pad_id: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Pad a batch to its longest item (or `pad_to`) and return int64 arrays."""
    width = max(len(x) for x in items)
    if pad_to is not None:
        width = max(width, pad_to)
    n = len(items)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    type_ids = np.zeros((n, width), dtype=np.int64)
    attention = np.zeros((n, width), dtype=np.int64)
    pool = np.zeros((n, width), dtype=np.int64)
    for row, item in enumerate(items):
        k = len(item)
        input_ids[row, :k] = item.input_ids
        type_ids[row, :k] = item.type_ids
        attention[row, :k] = 1
        pool[row, :k] = item.pool_mask
    return {"input_ids": input_ids, "token_type_ids": type_ids, "attention_mask": attention, "pool_mask": pool}


def plan_batches(
    lengths: Sequence[int], max_tokens: int, max_batch: int, width_step: int = 1, row_step: int = 1
) -> list[list[int]]:
    """Group indices by length so that padded tokens per batch stay under `max_tokens`.

    Sorting by length roughly halves the padding of news text; the caller restores input order.
    With `width_step`/`row_step` > 1 (runtimes that specialise per input shape) every batch has one
    padded width (a multiple of `width_step`) and `row_step` times a power of two rows; the last batch
    repeats its last index to reach `row_step` rows (the caller writes that row's result twice, the
    same value), and only a call with fewer than `row_step` items in all has fewer rows. That keeps
    the set of shapes small and fixed whatever the input (16 widths x 5 row counts for 128 tokens and
    row_step 8, plus up to 7 row counts for tiny calls): with free-form shapes, OpenVINO's memory grew
    with every new (rows, width) pair it met, so long scoring runs crept upwards.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    if width_step == 1 and row_step == 1:
        current: list[int] = []
        for i in order:
            width = lengths[i]  # sorted ascending, so the newest item is the widest
            if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_batch):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches
    carry: list[int] = []  # fewer than row_step items, moved up into the next (wider) group
    for width, group in itertools.groupby(order, key=lambda i: -(-lengths[i] // width_step) * width_step):
        pool = carry + list(group)
        cap = max(1, min(max_batch, max_tokens // max(width, 1)))
        # Row counts are row_step times a power of two, up to the largest that fits the budget.
        sizes = [row_step]
        while sizes[-1] * 2 <= cap:
            sizes.append(sizes[-1] * 2)
        while len(pool) >= row_step:
            size = next(n for n in reversed(sizes) if n <= len(pool))
            batches.append(pool[:size])
            pool = pool[size:]
        carry = pool
    if carry:
        if len(lengths) >= row_step:
            # Repeat the last item to fill the remainder up to row_step rows: a few wasted rows once per
            # call instead of up to (row_step - 1) x widths more shapes (they showed up slowly, one new
            # shape at a time, each adding memory, over a long run).
            carry += [carry[-1]] * (row_step - len(carry))
        batches.append(carry)
    return batches
