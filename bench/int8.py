"""Which int8 quantisation flips fewest decisions: calibration data, ignored layers, SmoothQuant.

For one trained version (its fp32 OpenVINO IR and torch weights), every variant is quantised from
the same fp32 IR in this one run and compared with the fp32 torch reference on sentences that no
variant was calibrated on: the news-genre test set with its contexts (866 sentences) plus every
sentence of the example documents in document mode. Printed per variant: argmax agreement per
target, the number of flipped decisions, and int8 sentences/s on that sample relative to the
fp32 IR (what an ignored layer costs).

    python bench/int8.py [--model TAG] [--threads 2] [--only base,b1_600,...]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stancewatch.model import store  # noqa: E402
from stancewatch.model.encoding import collate  # noqa: E402
from stancewatch.model.predictor import StanceModel  # noqa: E402
from stancewatch.model.runtime import OV_DIR, QuantizeOptions, agreement, export_fp32, quantize_int8  # noqa: E402
from stancewatch.model.splitter import split_sentences, with_context  # noqa: E402


def rows(name: str) -> list[tuple[str, str | None]]:
    with open(REPO / "training" / "data" / name, newline="", encoding="utf-8") as fh:
        return [(r["text"], r.get("context") or None) for r in csv.DictReader(fh)]


def document_inputs() -> list[tuple[str, str | None]]:
    out = []
    for path in sorted((REPO / "examples").glob("*.txt")):
        parts = split_sentences(path.read_text(encoding="utf-8"))
        out += list(zip([p.text for p in parts], with_context(parts)))
    return out


Q = QuantizeOptions
VARIANTS: dict[str, QuantizeOptions] = {
    # what optimise() did before this bench: 300 training sentences in padded batches of 8
    "base": Q(calibration=300, batch=8, ignore_heads=False),
    # one sentence per calibration item: no padding positions in the activation statistics
    "b1_300": Q(calibration=300, batch=1, ignore_heads=False),
    "b1_600": Q(calibration=600, batch=1, ignore_heads=False),
    "b1_600_heads_fp32": Q(calibration=600, batch=1, ignore_heads=True),
    "b1_600_edges_fp32": Q(calibration=600, batch=1, ignore_heads=True, ignore_edge_blocks=True),
    "b1_600_sq0.5": Q(calibration=600, batch=1, ignore_heads=True, smooth_quant_alpha=0.5),
    "b1_600_nosq": Q(calibration=600, batch=1, ignore_heads=True, smooth_quant_alpha=-1.0),
    "b1_600_fullbc": Q(calibration=600, batch=1, ignore_heads=True, fast_bias_correction=False),
}


def throughput(model: StanceModel, texts, contexts, rounds: int = 2) -> float:
    model.predict_arrays(texts[:64], contexts[:64])  # compile the common shapes first
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        model.predict_arrays(texts, contexts)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="latest")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = ap.parse_args()

    src = Path(store.get(args.model).path)
    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    folder = work / "model"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("model_int8.*"))
    try:
        reference = StanceModel(folder, backend="torch", threads=args.threads)
        train = rows("news_train.csv") + rows("default_corpus.csv")
        if not (folder / OV_DIR / "model.xml").exists():  # a version trained with optimise: false
            enc = reference.encoder.encode([t for t, _ in train[:8]], [c for _, c in train[:8]])
            export_fp32(folder, reference.backend.network, collate(enc, reference.encoder.pad_id))
        sample = rows("news_test.csv") + document_inputs()
        texts, contexts = [t for t, _ in sample], [c for _, c in sample]
        ref = reference.predict_arrays(texts, contexts)[0]
        fp32_ov = StanceModel(folder, backend="openvino", precision="fp32", threads=args.threads)
        base_speed = throughput(fp32_ov, texts, contexts)
        print(
            f"model {store.get(args.model).tag}; sample {len(sample)} sentences (news test + example documents), "
            f"calibration drawn from {len(train)} training sentences; fp32 IR {base_speed:.0f} sentences/s"
        )
        print(
            f"{'variant':22s} "
            + " ".join(f"{t[:17]:>17s}" for t in reference.schema.target_names)
            + "   flips  int8/fp32 speed  quantise s"
        )
        names = [n for n in args.only.split(",") if n] or list(VARIANTS)
        for name in names:
            opts = VARIANTS[name]
            rng = random.Random(0)
            calib = rng.sample(train, opts.calibration)
            enc = reference.encoder.encode([t for t, _ in calib], [c for _, c in calib])
            batches = [
                collate(enc[i : i + opts.batch], reference.encoder.pad_id) for i in range(0, len(enc), opts.batch)
            ]
            t0 = time.perf_counter()
            quantize_int8(folder, batches, opts)
            q_s = time.perf_counter() - t0
            cand = StanceModel(folder, backend="openvino", precision="int8", threads=args.threads)
            got = cand.predict_arrays(texts, contexts)[0]
            agree = agreement(ref, got)
            flips = sum(int((r.argmax(1) != g.argmax(1)).sum()) for r, g in zip(ref, got))
            speed = throughput(cand, texts, contexts)
            print(
                f"{name:22s} "
                + " ".join(f"{a * 100:16.2f}%" for a in agree)
                + f"   {flips:5d}  {speed / base_speed:14.2f}x  {q_s:9.1f}",
                flush=True,
            )
            (folder / OV_DIR / "model_int8.xml").unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
