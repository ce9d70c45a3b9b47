"""Retrain on public stance benchmarks through the user-facing API and report test scores.

Reads ../shared/data (skips with a message when absent). Each run trains with `training.train.train`
exactly as `stancewatch train --data FILE [--dev FILE]` does (schema inferred from the data, the
task's dev file or else a dev split of the training file, the default TrainConfig unless
overridden), in a throw-away model store, then scores the test file with the saved version. Every
run is a separate process so its peak memory is its own.

    python bench/public.py semeval --seeds 13 14 15      # SemEval-2016 Task 6 A, 5 targets, 5 heads
    python bench/public.py pstance --seeds 13 --set epochs=3   # P-Stance, 3 targets, its dev.csv as dev
    python bench/public.py semeval --seeds 13 --set epochs=4 --set learning_rate=5e-5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from stancewatch import settings  # noqa: E402

DATA = Path(settings.get("SHARED_DATA") or REPO.parent / "shared" / "data")
TASKS = {
    "semeval": ("semeval2016-task6/train.csv", "semeval2016-task6/test.csv"),
    "pstance": ("p-stance/train.csv", "p-stance/test.csv"),
}
# The task's own dev split, used as `stancewatch train --dev FILE` would; without one the dev split
# comes out of the training file.
DEV_FILES = {"pstance": "p-stance/dev.csv"}
ANCHORS = {
    "semeval": "best of 19 teams 67.82 (pooled); TweetEval split: RoBERTa-base 68.0, BERTweet 71.2",
    "pstance": "BERTweet 80.53 (mean F_avg over targets)",
}


def load_task(task: str):
    """The task's training data and its own dev file (None when it has none), as `stancewatch train` reads them."""
    from stancewatch.training.data import load_labelled

    # P-Stance's train.csv labels a few identical tweets both ways: drop those, as `--drop-conflicts` does.
    data = load_labelled([DATA / TASKS[task][0]], drop_conflicts=True)
    dev = (
        load_labelled([DATA / DEV_FILES[task]], schema=data.schema, drop_conflicts=True) if task in DEV_FILES else None
    )
    return data, dev


def run_one(task: str, seed: int, overrides: dict, out: Path) -> None:
    """Child process: train on the task's train file, evaluate on its test file, write JSON."""
    home = tempfile.mkdtemp(prefix="stancewatch-public-")
    os.environ["BENTOML_HOME"] = home
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    from stancewatch.model.predictor import StanceModel
    from stancewatch.training.config import TrainConfig
    from stancewatch.training.data import load_labelled
    from stancewatch.training.evaluate import evaluate_predictions, gold_lists
    from stancewatch.training.train import train

    test_file = DATA / TASKS[task][1]
    cfg = TrainConfig(**{**overrides, "seed": seed})
    started = time.time()
    data, dev = load_task(task)
    result = train(data, cfg, dev=dev, progress=False, promote="always")
    seconds = time.time() - started
    model = StanceModel.load(result.tag)
    test = load_labelled([test_file], schema=model.schema, drop_conflicts=True)
    probs, _ = model.predict_arrays([e.text for e in test.examples], [e.context or None for e in test.examples])
    report = evaluate_predictions(
        model.schema, gold_lists(test.examples, model.schema), dict(zip(model.schema.target_names, probs))
    )
    dev_metrics = result.metadata["metrics"]  # the dev split: what a recipe is chosen by
    out.write_text(
        json.dumps(
            {
                "task": task,
                "seed": seed,
                "tag": result.tag,
                "train_seconds": round(seconds, 1),
                "dev_pooled_f_avg": dev_metrics.get("pooled_f_avg"),
                "dev_mean_f_avg": dev_metrics.get("mean_f_avg"),
                "runtime": result.metadata.get("runtime", {}),
                "best_epoch": result.metadata.get("best_epoch"),
                "soup": result.metadata.get("soup"),
                "pooled_f_avg": report.get("pooled_f_avg"),
                "mean_f_avg": report["mean_f_avg"],
                "per_target_f_avg": {t: v["f_avg"] for t, v in report["targets"].items()},
                "n_train": len(data.examples),
                "n_test": len(test.examples),
                "config": cfg.to_dict(),
                "conflicts_dropped": {
                    "train": len(data.report.conflicts_dropped),
                    "test": len(test.report.conflicts_dropped),
                },
            },
            indent=1,
        )
    )
    shutil.rmtree(home, ignore_errors=True)


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    ap.add_argument("--set", action="append", default=[], help="TrainConfig override, e.g. epochs=4")
    ap.add_argument("--out", type=Path, default=None, help="write all runs as JSON here")
    ap.add_argument("--child", nargs=2, metavar=("SEED", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    overrides = parse_overrides(args.set)
    if args.child:
        run_one(args.task, int(args.child[0]), overrides, Path(args.child[1]))
        return
    missing = [p for p in (*TASKS[args.task], DEV_FILES.get(args.task)) if p and not (DATA / p).exists()]
    if missing:
        print(f"skipped: {', '.join(str(DATA / p) for p in missing)} not found (public data lives in ../shared/data)")
        return
    import numpy as np

    runs = []
    for seed in args.seeds:
        out = Path(tempfile.mkstemp(suffix=".json")[1])
        cmd = [sys.executable, __file__, args.task, "--child", str(seed), str(out)] + sum(
            (["--set", s] for s in args.set), []
        )
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"seed {seed} failed (status {status})")
        run = json.loads(out.read_text())
        run["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # ru_maxrss is in KiB on Linux
        runs.append(run)
        print(
            f"seed {seed}: dev pooled F_avg {100 * (run['dev_pooled_f_avg'] or 0):.2f}, dev mean F_avg "
            f"{100 * run['dev_mean_f_avg']:.2f}; test pooled F_avg {100 * (run['pooled_f_avg'] or 0):.2f}, mean per-target F_avg "
            f"{100 * run['mean_f_avg']:.2f}, {run['train_seconds']:.0f} s, peak {run['peak_rss_mb']:.0f} MB",
            flush=True,
        )

    def stat(key):
        vals = [100 * r[key] for r in runs if r[key] is not None]
        return f"{np.mean(vals):.2f} ± {np.std(vals):.2f}" if vals else "n/a"

    print(f"\n{args.task}: {len(runs)} seed(s); anchors: {ANCHORS[args.task]}")
    print("| metric | mean ± std over seeds |\n|---|---|")
    print(f"| dev split (the task's dev file, else carved from train): pooled F_avg | {stat('dev_pooled_f_avg')} |")
    print(f"| dev split: mean of per-target F_avg | {stat('dev_mean_f_avg')} |")
    print(f"| test: pooled F_avg (official) | {stat('pooled_f_avg')} |")
    print(f"| test: mean of per-target F_avg | {stat('mean_f_avg')} |")
    print(f"| training time (s) | {np.mean([r['train_seconds'] for r in runs]):.0f} |")
    print(f"| peak RSS (MB) | {max(r['peak_rss_mb'] for r in runs):.0f} |")
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
