"""Model soups: a greedy average of the weights of several runs from the same start (Wortsman et al.
2022, "Model soups"). `members > 1` in TrainConfig; one model comes out, so inference costs the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def average(states: Sequence[dict]) -> dict:
    """Element-wise mean of state dicts; tensors equal in all of them (frozen, buffers) are kept as is."""
    import torch

    out = {}
    for k, v in states[0].items():
        if not v.is_floating_point() or all(torch.equal(v, s[k]) for s in states[1:]):
            out[k] = v.clone()
        else:
            out[k] = sum(s[k] for s in states) / len(states)
    return out


def greedy_soup(members: Sequence, evaluate: Callable) -> tuple[dict, dict]:
    """Start from the best member on dev and add each next-best member only if the average's dev
    F_avg does not drop. `members` are training.train.Member; `evaluate(state=...)` or
    `evaluate(probs=...)` returns (dev mean F_avg, probabilities). Also records the dev F_avg of
    averaging the members' probabilities (an ensemble), for reference. Returns (state, summary)."""
    ranked = sorted(range(len(members)), key=lambda i: -members[i].dev_mean_f_avg)
    chosen = [ranked[0]]
    score = members[ranked[0]].dev_mean_f_avg
    for i in ranked[1:]:
        trial, _ = evaluate(state=average([members[j].state for j in chosen + [i]]))
        if trial >= score:
            chosen, score = chosen + [i], trial
    ensemble = {t: np.mean([m.dev_probs[t] for m in members], axis=0) for t in members[0].dev_probs}
    info = {
        "members": [{"seed": m.seed, "dev_mean_f_avg": m.dev_mean_f_avg, "best_epoch": m.best_epoch} for m in members],
        "chosen": [members[j].seed for j in chosen],
        "dev_mean_f_avg": score,
        # The soup's epoch is that of its first (best) member, which need not be the first trained.
        "best_epoch": members[chosen[0]].best_epoch,
        "ensemble_dev_mean_f_avg": evaluate(probs=ensemble)[0],
    }
    return average([members[j].state for j in chosen]), info
