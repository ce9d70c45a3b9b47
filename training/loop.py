"""The generic parts of a torch training loop, shared by fine-tuning (train.py) and task-adaptive
pretraining (tapt.py): seeding, parameter groups, the learning-rate schedule, mixed precision,
moving batches to the device, batched prediction."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np

from stancewatch.model.encoding import InputEncoder, collate, plan_batches
from stancewatch.model.schema import Schema
from stancewatch.training.config import TrainConfig
from stancewatch.training.data import Example

IGNORE = -100  # label id the loss skips (a target without a label)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def label_matrix(examples: Sequence[Example], schema: Schema) -> np.ndarray:
    y = np.full((len(examples), len(schema.targets)), IGNORE, dtype=np.int64)
    for i, ex in enumerate(examples):
        for j, target in enumerate(schema.targets):
            if target.name in ex.labels:
                y[i, j] = target.label_id(ex.labels[target.name])
    return y


def param_groups(network, cfg: TrainConfig) -> list[dict]:
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
            out[idx] = network(**to_device(batch, device)).float().cpu().numpy()
    return out


def linear_schedule(optimizer, warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `total` (transformers' schedule)."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup, total)


def autocast(bf16: bool, device):
    """bf16 mixed precision for the forward pass when `bf16`; weights and optimiser stay fp32."""
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_device(batch: dict, device) -> dict:
    import torch

    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}
