"""Inference throughput: naive transformers pipeline vs our torch path vs our optimised path.

All variants run in this one process on the same sentences, tokenisation included, one after the
other (never concurrently), on two workloads:
  long  - news-length sentences (11-96 tokens), built by joining sentences of the bundled corpus
  short - sentences of about 20 tokens
The pipeline baseline is a BertForSequenceClassification with the served model's encoder weights
and one 6-way head, the same compute as our two 3-way heads.

    python bench/throughput.py [--model TAG] [--n 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
INT8_PEAK_GOPS = 920.0  # 2 Zen 4 cores, VNNI int8 (issue 5's roofline)


def corpus_sentences() -> list[str]:
    with open(REPO / "training" / "data" / "default_corpus.csv", newline="", encoding="utf-8") as fh:
        return [r["text"] for r in csv.DictReader(fh)]


def build_workloads(tokenizer, n: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    base = corpus_sentences()
    lengths = {s: len(tokenizer.encode(s, add_special_tokens=False).ids) for s in base}
    long, short = [], []
    while len(long) < n:  # join corpus sentences until a drawn target length (11-96 tokens) is reached
        target = min(96, max(11, int(rng.gauss(46, 18))))
        parts, total = [], 0
        while total < target:
            s = rng.choice(base)
            parts.append(s.rstrip("."))
            total += lengths[s] + 1
        ids = tokenizer.encode(", and ".join(parts) + ".", add_special_tokens=False).ids[:target]
        long.append(tokenizer.decode(ids))
    pool = [s for s in base if 17 <= lengths[s] <= 23]
    while len(short) < n:
        short.append(rng.choice(pool) if pool else rng.choice(base))
    return {"long": long, "short": short}


def gflop_per_sentence(tokenizer, sentences, hidden: int, layers: int) -> float:
    """Encoder FLOPs: per layer 24*H^2 per token (projections, FFN) + 4*H*T^2 (attention)."""
    total = 0.0
    for s in sentences:
        t = len(tokenizer.encode(s).ids)
        total += layers * (24 * hidden * hidden * t + 4 * hidden * t * t)
    return total / len(sentences) / 1e9


def timed(fn, sentences) -> float:
    fn(sentences[:16])  # warm-up (shapes, caches)
    start = time.perf_counter()
    fn(sentences)
    return len(sentences) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="tag or artefact folder (default: production, else latest)")
    ap.add_argument("--n", type=int, default=2000, help="sentences per workload")
    ap.add_argument("--naive-n", type=int, default=400, help="sentences for the slow one-at-a-time pipeline")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ["STANCEWATCH_THREADS"] = str(args.threads)

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast, pipeline

    from model.predictor import StanceModel

    torch.set_num_threads(args.threads)
    fast = StanceModel.load(args.model, backend="auto", threads=args.threads)
    ref = StanceModel(fast.folder, backend="torch", threads=args.threads)
    cfg = BertConfig.from_pretrained(str(fast.folder))
    clf = BertForSequenceClassification(BertConfig(**{**cfg.to_dict(), "num_labels": sum(fast.head_sizes)}))
    clf.bert.load_state_dict({k[len("encoder."):]: v for k, v in ref.backend.network.state_dict().items()
                              if k.startswith("encoder.")}, strict=False)
    clf.eval()
    tok = BertTokenizerFast(tokenizer_file=str(fast.folder / "tokenizer.json"))
    pipe = pipeline("text-classification", model=clf, tokenizer=tok, device=-1, truncation=True, max_length=fast.max_length)

    workloads = build_workloads(fast.encoder.tokenizer, args.n)
    print(f"model {fast.tag}: optimised backend {fast.backend.name} "
          f"{getattr(fast.backend, 'precision', 'fp32')}; threads {args.threads}; torch {torch.__version__}")
    for name, sentences in workloads.items():
        gflop = gflop_per_sentence(fast.encoder.tokenizer, sentences, cfg.hidden_size, cfg.num_hidden_layers)
        ntok = [len(fast.encoder.tokenizer.encode(s).ids) for s in sentences]
        print(f"\nworkload {name}: {len(sentences)} sentences, tokens {min(ntok)}-{max(ntok)} (mean {sum(ntok) / len(ntok):.1f}), "
              f"{gflop:.3f} GFLOP/sentence, int8 ceiling {INT8_PEAK_GOPS / gflop:.0f} sentences/s")
        rows = []
        with torch.inference_mode():
            rows.append(("pipeline, one at a time", timed(lambda xs: [pipe(x) for x in xs], sentences[: args.naive_n])))
            rows.append(("pipeline, batch_size=32", timed(lambda xs: pipe(xs, batch_size=32), sentences)))
        rows.append(("ours, torch fp32 (sorted batches)", timed(lambda xs: ref.predict_arrays(xs), sentences)))
        label = f"ours, {fast.backend.name} {getattr(fast.backend, 'precision', 'fp32')} (default path)"
        rows.append((label, timed(lambda xs: fast.predict_arrays(xs), sentences)))
        naive = rows[0][1]
        print(f"{'variant':45s} {'sent/s':>8s} {'x naive':>8s} {'% int8 roofline':>16s}")
        for label, rate in rows:
            print(f"{label:45s} {rate:8.1f} {rate / naive:8.2f} {100 * rate * gflop / INT8_PEAK_GOPS:15.1f}%")


if __name__ == "__main__":
    main()
