"""Two inference batch budgets side by side: `stancewatch score --unit sentence` as fresh processes.

Runs A (STANCEWATCH_BATCH_TOKENS=--a) and B (--b) on the same sentences (the workloads of
bench/throughput.py), pair by pair, alternating which goes first (A B, B A, A B, ...) so that an
order effect cancels; prints per run the wall time and that process's peak RSS, then per workload
the median of the pairwise wall ratios A/B. Pairing keeps the ratio meaningful while the machine's
speed drifts. After every pair it checks that both budgets gave the same labels for every target.

    python bench/batch_tokens.py [--model TAG] [--a 2048] [--b 8192] [--pairs 8] [--n 6000]
                                 [--workloads long,news] [--backend auto|torch|openvino]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from throughput import build_workloads, score_process, write_jsonl  # noqa: E402


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
    ap.add_argument("--backend", default="auto", help="auto | torch | openvino, as `stancewatch score --backend`")
    ap.add_argument("--workloads", default="long,news", help="comma-separated: long, short, news")
    args = ap.parse_args()

    from stancewatch.model.predictor import StanceModel

    model = StanceModel.load(args.model, backend=args.backend, threads=args.threads)
    folder, targets = model.folder, [t.name for t in model.schema.targets]
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    workloads = {k: v for k, v in build_workloads(model.encoder.tokenizer, args.n).items() if k in chosen}
    print(f"model {model.tag}, {model.backend.name} {getattr(model.backend, 'precision', '')}; A={args.a} B={args.b}")
    del model
    budgets = {"A": args.a, "B": args.b}
    with tempfile.TemporaryDirectory(prefix="stancewatch-bench-") as tmp:
        for name, sentences in workloads.items():
            src = write_jsonl(Path(tmp) / f"{name}.jsonl", sentences)
            outs = {k: Path(tmp) / f"{name}_{k}.parquet" for k in budgets}
            ratios, peaks, same = [], {k: [] for k in budgets}, True
            for i in range(args.pairs):
                walls = {}
                for k in "AB" if i % 2 == 0 else "BA":
                    env = {"STANCEWATCH_BATCH_TOKENS": str(budgets[k]), "STANCEWATCH_THREADS": str(args.threads)}
                    walls[k], usage = score_process(folder, src, outs[k], env, args.backend)
                    peaks[k].append(usage.ru_maxrss / 1024)  # KiB -> MiB
                ratios.append(walls["A"] / walls["B"])
                same = same and labels(outs["A"], targets) == labels(outs["B"], targets)
                print(
                    f"{name} pair {i + 1}: A {walls['A']:.2f} s ({peaks['A'][-1]:.0f} MiB), "
                    f"B {walls['B']:.2f} s ({peaks['B'][-1]:.0f} MiB), A/B {ratios[-1]:.3f}",
                    flush=True,
                )
            print(
                f"{name}: {len(sentences)} sentences; median wall A/B {statistics.median(ratios):.3f} "
                f"(min {min(ratios):.3f}, max {max(ratios):.3f}); median peak RSS A {statistics.median(peaks['A']):.0f} MiB, "
                f"B {statistics.median(peaks['B']):.0f} MiB; labels identical in every pair: {same}"
            )


if __name__ == "__main__":
    main()
