"""Two inference batch budgets side by side: `stancewatch score --unit sentence` as fresh processes.

Runs A (STANCEWATCH_BATCH_TOKENS=--a) and B (--b) in turn, A B A B ..., on the same sentences (the
workloads of bench/throughput.py), and prints per run the wall time and that process's peak RSS,
then per workload the median of the pairwise wall ratios A/B. Pairing keeps the ratio meaningful
while the machine's speed drifts. It also checks that both budgets give the same labels.

    python bench/batch_tokens.py [--model TAG] [--a 2048] [--b 8192] [--pairs 8] [--n 6000] [--workloads long,news]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from throughput import build_workloads  # noqa: E402


def run_once(folder: Path, src: Path, out: Path, budget: int, threads: int) -> tuple[float, float]:
    """(wall s, peak RSS MB) of one fresh scoring process with this batch budget."""
    env = {**os.environ, "STANCEWATCH_BATCH_TOKENS": str(budget), "STANCEWATCH_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "stancewatch.cli", "score", str(src), "--unit", "sentence"]
    cmd += ["--model", str(folder), "--out", str(out), "--no-progress"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stancewatch score exited with {proc.returncode} (budget {budget})")
    return wall, usage.ru_maxrss / 1024


def labels(path: Path, targets: list[str]) -> list[tuple]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=targets)
    return list(zip(*(table.column(t).to_pylist() for t in targets)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="tag or artefact folder (default: production, else latest)")
    ap.add_argument("--a", type=int, default=2048, help="candidate budget (padded tokens per batch)")
    ap.add_argument("--b", type=int, default=8192, help="baseline budget")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--n", type=int, default=6000, help="sentences per workload")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default="long,news", help="comma-separated: long, short, news")
    args = ap.parse_args()

    from stancewatch.model.predictor import StanceModel

    model = StanceModel.load(args.model, backend="auto", threads=args.threads)
    folder, targets = model.folder, [t.name for t in model.schema.targets]
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    workloads = {k: v for k, v in build_workloads(model.encoder.tokenizer, args.n).items() if k in chosen}
    print(f"model {model.tag}, {model.backend.name} {getattr(model.backend, 'precision', '')}; A={args.a} B={args.b}")
    del model
    with tempfile.TemporaryDirectory(prefix="stancewatch-bench-") as tmp:
        for name, sentences in workloads.items():
            src = Path(tmp) / f"{name}.jsonl"
            src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(sentences)))
            outs = {k: Path(tmp) / f"{name}_{k}.parquet" for k in "ab"}
            ratios, peaks = [], {"a": [], "b": []}
            for i in range(args.pairs):
                wall_a, peak_a = run_once(folder, src, outs["a"], args.a, args.threads)
                wall_b, peak_b = run_once(folder, src, outs["b"], args.b, args.threads)
                ratios.append(wall_a / wall_b)
                peaks["a"].append(peak_a)
                peaks["b"].append(peak_b)
                print(
                    f"{name} pair {i + 1}: A {wall_a:.2f} s ({peak_a:.0f} MB), B {wall_b:.2f} s ({peak_b:.0f} MB), "
                    f"A/B {wall_a / wall_b:.3f}",
                    flush=True,
                )
            same = labels(outs["a"], targets) == labels(outs["b"], targets)
            print(
                f"{name}: {len(sentences)} sentences; median wall A/B {statistics.median(ratios):.3f} "
                f"(min {min(ratios):.3f}, max {max(ratios):.3f}); median peak RSS A {statistics.median(peaks['a']):.0f} MB, "
                f"B {statistics.median(peaks['b']):.0f} MB; labels identical: {same}"
            )


if __name__ == "__main__":
    main()
