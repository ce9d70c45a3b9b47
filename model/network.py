"""The torch network: a shared transformer encoder with one linear head per target."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel


class StanceNetwork(nn.Module):
    """Encoder + masked mean pooling over the sentence's tokens + one head per target.

    `forward` returns the logits of all heads concatenated along the last axis (in schema order),
    so one pass scores every target; `head_sizes` tells how to split them.
    """

    def __init__(self, encoder: nn.Module, head_sizes: list[int], dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.head_sizes = list(head_sizes)
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList([nn.Linear(hidden, n) for n in self.head_sizes])
        self._takes_type_ids = "token_type_ids" in inspect.signature(encoder.forward).parameters

    @classmethod
    def from_base(cls, base_path: str | Path, head_sizes: list[int], dropout: float = 0.1) -> StanceNetwork:
        """Start from a local pretrained encoder folder (never the network: local files only)."""
        encoder = AutoModel.from_pretrained(str(base_path), local_files_only=True)
        return cls(encoder, head_sizes, dropout)

    @classmethod
    def from_config(cls, folder: str | Path, head_sizes: list[int]) -> StanceNetwork:
        """An untrained network with the architecture saved in `folder` (weights loaded later)."""
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        return cls(AutoModel.from_config(config), head_sizes)

    def forward(self, input_ids, attention_mask, token_type_ids, pool_mask):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._takes_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        weights = pool_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        pooled = self.dropout(pooled)
        return torch.cat([head(pooled) for head in self.heads], dim=-1)
