"""Two one-thread model replicas on one host, with OpenVINO's thread pinning forced on (the behaviour
before model/runtime.py:pin_threads) against the project's choice (off for a process that uses fewer
threads than its CPUs), in one run.

Each side starts two fresh processes at once, each with `StanceModel(threads=1)` on its own half of
the same sentences (bench/throughput.py's workloads); both load and warm up, then start
`predict_arrays` at the same moment (a replica that reaches the start late stops the bench). Per
process it prints the inference wall and CPU seconds and the pinning its compiled model reports;
per pair the ratio of the slower process's wall on each side. The sides alternate which goes
first, and the result is the median of the pairwise wall ratios (choice / forced). A process that gets a core of its own
has CPU about equal to wall; two processes pinned to one core each get about half of it.

    python bench/pinning.py [--model TAG] [--n 4000] [--pairs 3] [--workload long|news]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]
from throughput import build_workloads  # noqa: E402

# One replica: load, warm up, wait for the common start, time inference. With FORCE_PIN=1 every
# compile_model call gets ENABLE_CPU_PINNING=True, which is what OpenVINO did by default.
CHILD = r"""
import json, os, sys, time
if os.environ.get("FORCE_PIN") == "1":
    import openvino as ov
    compile_model = ov.Core.compile_model
    def pinned(self, model, device=None, config=None):
        return compile_model(self, model, device, {**(config or {}), "ENABLE_CPU_PINNING": True})
    ov.Core.compile_model = pinned
from stancewatch.model.predictor import StanceModel
texts = json.load(open(sys.argv[2]))
m = StanceModel(sys.argv[1], threads=1)
m.predict_arrays(texts[:16], None)
late = time.time() - float(sys.argv[3])  # > 0: loading took longer than the wait
while time.time() < float(sys.argv[3]):
    time.sleep(0.005)
wall, cpu = time.perf_counter(), time.process_time()
m.predict_arrays(texts, None)
pinned = bool(m.backend.compiled.get_property("ENABLE_CPU_PINNING"))
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "late": late,
                  "pinned": pinned, "backend": m.backend.name}))
"""


def replicas(folder: Path, halves: list[Path], force_pin: bool) -> list[dict]:
    """Two replicas at once; their inference wall and CPU seconds."""
    env = dict(os.environ, FORCE_PIN="1" if force_pin else "0")
    env.pop("STANCEWATCH_THREADS", None)
    start = time.time() + 15  # both are loaded and warm by then (about 3 s each here)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(folder), str(half), str(start)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for half in halves
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a replica failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    if any(r["late"] > 0.05 for r in out):
        raise SystemExit(
            f"a replica was loaded {max(r['late'] for r in out):.2f} s after the common start: raise the wait"
        )
    if any(r["backend"] != "openvino" for r in out):
        raise SystemExit("the model does not run on OpenVINO here: pinning is not in play")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="tag or artefact folder (default: production, else latest)")
    ap.add_argument("--n", type=int, default=4000, help="sentences in all (each replica scores half)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--workload", default="long", choices=["long", "news"])
    args = ap.parse_args()

    from stancewatch.model.predictor import StanceModel, locate
    from stancewatch.model.runtime import usable_cpus

    folder, tag = locate(args.model)
    tokenizer = StanceModel(folder, threads=1).encoder.tokenizer
    texts = build_workloads(tokenizer, args.n)[args.workload]
    work = Path(tempfile.mkdtemp(prefix="bench-pinning-"))
    halves = []
    for k, part in enumerate((texts[: len(texts) // 2], texts[len(texts) // 2 :])):
        halves.append(work / f"half{k}.json")
        halves[-1].write_text(json.dumps(part))
    print(f"model {tag}; {len(texts)} {args.workload} sentences, two one-thread replicas; {usable_cpus()} CPUs")
    ratios = []
    for pair in range(args.pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        walls = {}
        for force in order:
            runs = replicas(folder, halves, force)
            walls[force] = max(r["wall"] for r in runs)
            side = "pinning forced on" if force else "pin_threads choice"
            detail = ", ".join(f"wall {r['wall']:.2f} s cpu {r['cpu']:.2f} s pinned {r['pinned']}" for r in runs)
            print(f"pair {pair + 1} {side:>19}: {detail}")
        ratios.append(walls[False] / walls[True])
        print(f"pair {pair + 1}: wall ratio choice / forced {ratios[-1]:.3f}")
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"median wall ratio choice / forced over {len(ratios)} pairs: {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
