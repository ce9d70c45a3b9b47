"""How often a fresh model gets int8: train the same recipe with several seeds and print the gate.

Each seed trains on the bundled corpus exactly as `stancewatch train` would (the quick first-start
recipe with --quick, else the full default recipe), without saving to the store, and prints what
training/optimise.py decided: the precision chosen, int8's agreement with fp32 torch on the gate
sample with and without the near-tie rescue, the share of rows the rescue re-ran in fp32, the
fitted margins and bf16's agreement when it was tried. The last line is the pass count.

    python bench/int8_seeds.py [--quick] [--seeds 1,2,3,...] [--threads 2] [--save-last]

--save-last saves the last seed's version to the model store ($BENTOML_HOME; promoted when the store
has no production yet), for the inference benchmarks to run on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stancewatch.training.config import FIRST_START, TrainConfig  # noqa: E402
from stancewatch.training.data import DEFAULT_CORPUS, load_labelled  # noqa: E402
from stancewatch.training.optimise import MIN_AGREEMENT  # noqa: E402
from stancewatch.training.train import train  # noqa: E402


def fmt(d: dict | None) -> str:
    return "-" if not d else " / ".join(f"{100 * v:.2f}%" for v in d.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"the first-start recipe ({FIRST_START})")
    ap.add_argument("--seeds", default="1,2,3,4,5,6,7,8,9,10")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-last", action="store_true", help="save the last seed's version to the model store")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = dict(FIRST_START) if args.quick else {}
    print(f"recipe: {'quick ' + str(FIRST_START) if args.quick else 'full default'}; gate {MIN_AGREEMENT:.1%}")
    print(
        "seed  precision  int8 agreement (targets)   without rescue             rescued  fit flips  bf16        train s"
    )
    passed = 0
    for seed in seeds:
        cfg = TrainConfig(seed=seed, threads=args.threads, **overrides)
        started = time.perf_counter()
        save = args.save_last and seed == seeds[-1]
        result = train(load_labelled(DEFAULT_CORPUS), cfg, save=save, progress=False)
        took = time.perf_counter() - started
        runtime = result.metadata["runtime"]
        if save:
            print(f"saved as {result.tag}")
        else:
            shutil.rmtree(result.folder, ignore_errors=True)
        int8 = runtime["candidates"]["int8"]
        bf16 = runtime["candidates"].get("bf16", {})
        passed += runtime["precision"] == "int8"
        print(
            f"{seed:4d}  {runtime['precision']:9s}  {fmt(int8['agreement']):25s}  "
            f"{fmt(int8.get('agreement_without_rescue')):25s}  {100 * int8.get('rescued_share', 0):6.2f}%  "
            f"{sum(int8.get('fit_flips', {}).values()):9d}  {fmt(bf16.get('agreement')):10s}  {took:7.0f}",
            flush=True,
        )
    print(f"int8 chosen in {passed} of {len(seeds)} trainings (gate sample {runtime['agreement_sample']} sentences)")


if __name__ == "__main__":
    main()
