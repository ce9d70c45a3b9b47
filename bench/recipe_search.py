"""Choose a training recipe on a public task's dev split only (the test file is never read).

Every candidate (a set of TrainConfig overrides) is trained once per seed with `training.train.fit`,
on exactly the train/dev split `bench/public.py` and `stancewatch train` make from the task's
training file (a stratified split seeded by the run's seed, or the task's own dev file), and scored
on that dev split. Runs go to worker processes (`--jobs`; on a CUDA machine several share the GPU),
one JSON line each to `--out` as they finish, and the summary ranks candidates by the mean over
seeds of the dev pooled F_avg, with the paired difference to the first candidate (the baseline).

    python bench/recipe_search.py semeval --seeds 13 14 15 --jobs 1
    python bench/recipe_search.py semeval --grid grid.json --jobs 8 --set device=cuda --out runs.jsonl

`--grid FILE` is a JSON list of {"name": ..., "set": {key: value}}; without it a built-in grid runs.
Confirm a winner on test with `bench/public.py ... --set key=value` afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from public import DATA, TASKS, load_task, parse_overrides  # noqa: E402

GRID = [
    {"name": "default", "set": {}},
    {"name": "lr5e-5", "set": {"learning_rate": 5e-5}},
    {"name": "lr1.2e-4", "set": {"learning_rate": 1.2e-4}},
    {"name": "bs32-lr1.2e-4", "set": {"batch_size": 32, "learning_rate": 1.2e-4}},
    {"name": "bs8-lr5e-5", "set": {"batch_size": 8, "learning_rate": 5e-5}},
    {"name": "head-lr-x1", "set": {"head_lr_multiplier": 1.0}},
    {"name": "dropout0.2", "set": {"dropout": 0.2}},
    {"name": "smooth0.1", "set": {"label_smoothing": 0.1}},
    {"name": "freeze-emb", "set": {"freeze_embeddings": True}},
    {"name": "freeze-emb+smooth0.1", "set": {"freeze_embeddings": True, "label_smoothing": 0.1}},
    {"name": "epochs20-pat5", "set": {"epochs": 20, "patience": 5}},
    {"name": "epochs5", "set": {"epochs": 5}},
    {"name": "wd0.1-warm0.06", "set": {"weight_decay": 0.1, "warmup_ratio": 0.06}},
    {"name": "llrd0.8-lr1.5e-4", "set": {"layer_lr_decay": 0.8, "learning_rate": 1.5e-4}},
    {"name": "tapt10", "set": {"tapt_epochs": 10}},
    {"name": "tapt30", "set": {"tapt_epochs": 30}},
    {"name": "tapt10+freeze-emb", "set": {"tapt_epochs": 10, "freeze_embeddings": True}},
    {"name": "tapt10+smooth0.1", "set": {"tapt_epochs": 10, "label_smoothing": 0.1}},
]


def run_one(task: str, name: str, overrides: dict, seed: int, threads: int) -> dict:
    """Worker: one fit on the task's train/dev split, scored on dev (pooled and mean F_avg)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    from stancewatch.training.config import TrainConfig
    from stancewatch.training.evaluate import evaluate_predictions, gold_lists, split_probs
    from stancewatch.training.train import fit, predict_logits, training_split

    cfg = TrainConfig(**{**overrides, "seed": seed})
    data, dev = load_task(task)
    train_ex, dev_ex = training_split(data, cfg, dev)
    started = time.time()
    result = fit(train_ex, dev_ex, data.schema, cfg, progress=False)
    result.release_scratch()
    encoded = result.encoder.encode([e.text for e in dev_ex], [e.context or None for e in dev_ex])
    report = evaluate_predictions(
        data.schema,
        gold_lists(dev_ex, data.schema),
        split_probs(predict_logits(result.network, result.encoder, encoded), data.schema),
    )
    return {
        "name": name,
        "seed": seed,
        "set": overrides,
        "dev_pooled_f_avg": report.get("pooled_f_avg"),
        "dev_mean_f_avg": report["mean_f_avg"],
        "best_epoch": result.best_epoch,
        "seconds": round(time.time() - started, 1),
        "device": str(cfg.torch_device()),
        "tapt": result.tapt,
    }


def summarise(runs: list[dict], order: list[str]) -> str:
    import numpy as np

    by = {}
    for r in runs:
        by.setdefault(r["name"], {})[r["seed"]] = r
    base = by.get(order[0], {})
    lines = [
        "| candidate | seeds | dev pooled F_avg | dev mean F_avg | paired diff vs first (pooled) | s/run |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for name in order:
        if name not in by:
            continue
        got = by[name]
        pooled = [100 * r["dev_pooled_f_avg"] for r in got.values()]
        mean = [100 * r["dev_mean_f_avg"] for r in got.values()]
        common = sorted(set(got) & set(base))
        diff = [100 * (got[s]["dev_pooled_f_avg"] - base[s]["dev_pooled_f_avg"]) for s in common]
        rows.append(
            (
                np.mean(pooled),
                f"| {name} | {len(got)} | {np.mean(pooled):.2f} ± {np.std(pooled):.2f} | "
                f"{np.mean(mean):.2f} ± {np.std(mean):.2f} | "
                f"{(f'{np.mean(diff):+.2f} (n={len(diff)})') if diff else 'n/a'} | "
                f"{np.mean([r['seconds'] for r in got.values()]):.0f} |",
            )
        )
    lines += [line for _, line in sorted(rows, key=lambda x: -x[0])]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    ap.add_argument("--grid", type=Path, help="JSON list of {name, set}; default: the built-in grid")
    ap.add_argument("--only", nargs="+", help="run only these candidate names")
    ap.add_argument("--set", action="append", default=[], help="override applied to every candidate, e.g. device=cuda")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: CPUs / jobs)")
    ap.add_argument("--budget-s", type=float, default=0, help="start no new run after this many seconds")
    ap.add_argument("--out", type=Path, help="append one JSON line per finished run")
    args = ap.parse_args()
    if not (DATA / TASKS[args.task][0]).exists():
        print(f"skipped: {DATA / TASKS[args.task][0]} not found (public data lives in ../shared/data)")
        return
    grid = json.loads(args.grid.read_text()) if args.grid else GRID
    if args.only:
        grid = [g for g in grid if g["name"] in args.only]
    common = parse_overrides(args.set)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    # Seeds outermost: every candidate gets its first seed before any gets a second.
    todo = [(g["name"], {**g["set"], **common}, seed) for seed in args.seeds for g in grid]
    started, runs, failed = time.time(), [], []
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        pending = {}
        while todo or pending:
            while todo and len(pending) < args.jobs and not (args.budget_s and time.time() - started > args.budget_s):
                name, overrides, seed = todo.pop(0)
                pending[pool.submit(run_one, args.task, name, overrides, seed, threads)] = (name, seed)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                name, seed = pending.pop(fut)
                try:
                    run = fut.result()
                except Exception as exc:  # report and go on: one bad candidate must not lose the others
                    failed.append(f"{name} seed {seed}: {exc!r}")
                    print(f"FAILED {name} seed {seed}: {exc!r}", flush=True)
                    continue
                runs.append(run)
                print(
                    f"{name} seed {seed}: dev pooled {100 * run['dev_pooled_f_avg']:.2f} mean "
                    f"{100 * run['dev_mean_f_avg']:.2f} epoch {run['best_epoch']} {run['seconds']:.0f} s",
                    flush=True,
                )
                if args.out:
                    with args.out.open("a") as fh:
                        fh.write(json.dumps(run) + "\n")
    print(
        f"\n{args.task}: {len(runs)} runs in {time.time() - started:.0f} s; {len(todo)} not started; "
        f"{len(failed)} failed"
    )
    print(summarise(runs, [g["name"] for g in grid]))


if __name__ == "__main__":
    main()
