"""Fast CPU inference with OpenVINO: export, int8 quantisation, validation, and the backend.

A saved version carries `openvino/model.xml` (fp32 IR) and, when it passed validation,
`openvino/model_int8.xml` (NNCF post-training quantisation, calibrated on training texts).
training/optimise.py picks the precision (int8, else bf16: the fp32 IR run with bf16 inference
precision, else fp32 torch) and stores the choice and its gate figures in stancewatch.json under
"runtime".

int8 comes with a near-tie rescue: a sentence whose int8 top-two logit margin for some target is
below that target's `rescue_margin` is run again on the fp32 IR and keeps the fp32 logits. int8
noise moves a logit by about 0.01-0.05 here, so it can flip only decisions that are nearly tied
(measured on a 1-epoch model: all 109 flips of 6,000 decisions had an int8 margin under 0.053); the
rescue removes those flips at the cost of running the few near-ties twice.

The backend needs only numpy and openvino (plus tokenizers in the predictor): serving and
scoring processes that use it never import torch or transformers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stancewatch import settings

log = logging.getLogger(__name__)

OV_DIR = "openvino"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "pool_mask")
LENGTH_STEP = 8  # pad sequence lengths to a multiple of this: fewer distinct shapes


# CPU flags (Linux /proc/cpuinfo names) of instructions that multiply int8 vectors in one step.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags, or None where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def int8_pays(flags: frozenset[str] | None = None) -> bool:
    """Whether int8 beats the fp32 IR on this CPU: it does only with int8 dot-product instructions.

    Measured on an AVX2-only EPYC (no VNNI; 1,200 news sentences, 2 threads, the same model): the
    fp32 IR ran 128-134 sentences/s against 102-123 for int8 with or without the rescue, so int8
    there is slower and inexact. With VNNI (the Zen 4 and AMX Xeon of earlier benchmarks) int8 is
    kept as the gate chose it; the fp32 IR was not timed side by side there. Unknown flags (not
    Linux) keep int8, as before."""
    flags = cpu_flags() if flags is None else flags
    return flags is None or bool(flags & INT8_DOT_FLAGS)


def run_precision(recorded: str, requested: str | None, folder: Path, flags: frozenset[str] | None = None) -> str:
    """The OpenVINO precision to run: `requested` (int8, bf16, fp32) as asked; None or "auto" the
    version's `recorded` choice, except int8 on a CPU where it does not pay (`int8_pays`) and the
    fp32 IR exists."""
    if requested and requested != "auto":
        return requested
    if recorded == "int8" and not int8_pays(flags) and (Path(folder) / OV_DIR / "model.xml").exists():
        log.info("int8 runs slower than fp32 on a CPU without VNNI/AMX: running the fp32 IR")
        return "fp32"
    return recorded


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count (not Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def pin_threads(threads: int, cpus: int | None = None) -> bool:
    """Whether OpenVINO may pin its inference threads to cores: only when they use every CPU this
    process may run on.

    OpenVINO pins a stream's threads to cores counted from the first, knowing nothing of other
    processes. Two one-thread processes on one host (two Ray actors, two service workers) were then
    both pinned to core 0 and shared it. bench/pinning.py (2-core EPYC, the full default model in
    int8, two replicas on 2,000 long sentences each, at once, 3 alternating pairs): 11.3-12.2 s wall
    and 5.8-6.3 s CPU each with pinning forced on, 5.5-6.2 s wall without; median wall ratio 0.519.
    A process that uses all its CPUs keeps pinning, which was not worse there: one two-thread process
    on 4,000 sentences ran 5.8-6.3 s pinned against 6.1-6.5 s unpinned (three alternating pairs, a
    scratch script; the ranges overlap).
    """
    return threads >= (usable_cpus() if cpus is None else cpus)


class OpenVINOBackend:
    """Runs the exported IR; several batches in flight so two cores stay busy."""

    name = "openvino"

    def __init__(
        self,
        folder: Path,
        precision: str,
        threads: int,
        streams: int | None = None,
        rescue_margin: Sequence[float] | None = None,
    ):
        import openvino as ov

        xml = Path(folder) / OV_DIR / ("model_int8.xml" if precision == "int8" else "model.xml")
        if not xml.exists():
            raise FileNotFoundError(f"{xml} is missing; the version was not exported for OpenVINO")
        self.precision = precision
        core = ov.Core()
        # One stream per core with one thread each beats one two-thread stream for
        # BERT-sized batches: no barrier between the cores inside every layer.
        streams = streams or max(1, threads)
        config = {
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": int(streams),
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "ENABLE_CPU_PINNING": pin_threads(threads),
            # Kernels are cached per input shape; unbounded, memory grows with every new
            # (batch, length) pair (measured: 600 -> 1,719 MB over 600 random batches). 200
            # entries kept it flat at ~900 MB with no measurable slowdown.
            "CPU_RUNTIME_CACHE_CAPACITY": settings.get("OV_SHAPE_CACHE"),
        }
        self.compiled = core.compile_model(core.read_model(xml), "CPU", config)
        self.streams = streams
        self.queue = ov.AsyncInferQueue(self.compiled, streams)
        self.request = self.compiled.create_infer_request()
        self.length_step = LENGTH_STEP
        # Per-head margins under which an int8 row is re-run in fp32 (None or int8 off: no rescue).
        self.rescue_margin = (
            np.asarray(rescue_margin, dtype=np.float32) if precision == "int8" and rescue_margin else None
        )
        # The fp32 IR that near-ties are re-run on, compiled now rather than inside the first request
        # that needs it (a fraction of a second and ~90 MB for MiniLM).
        self.fallback = OpenVINOBackend(folder, "fp32", threads, streams) if self.rescue_margin is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.request.infer(batch)[0].copy()

    def run_many(self, batches: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Run batches concurrently on the infer-request pool; results in the same order."""
        results: list[np.ndarray | None] = [None] * len(batches)

        def done(request, index):
            results[index] = request.get_output_tensor(0).data.copy()

        self.queue.set_callback(done)
        for i, batch in enumerate(batches):
            self.queue.start_async(batch, i)
        self.queue.wait_all()
        return results  # type: ignore[return-value]


# ---- export and validation (needs torch; runs at training time) ------------------------------


def _ov_inputs(batch: dict[str, np.ndarray]):
    import torch

    return {k: torch.from_numpy(batch[k]) for k in INPUT_NAMES}


def export_fp32(folder: Path, network, example_batch: dict[str, np.ndarray]) -> Path:
    """Convert the torch network to an OpenVINO IR with dynamic batch and length."""
    import openvino as ov

    network.eval()
    ov_model = ov.convert_model(network, example_input=_ov_inputs(example_batch))
    ov_model.reshape({i.get_any_name(): ov.PartialShape([-1, -1]) for i in ov_model.inputs})
    out = Path(folder) / OV_DIR
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, out / "model.xml", compress_to_fp16=False)
    return out / "model.xml"


@dataclass(frozen=True)
class QuantizeOptions:
    """How int8 is calibrated; bench/int8.py measures each choice (README, Fast inference)."""

    # The defaults are what optimise() uses. bench/int8.py found no variant clearly better on a
    # 1-epoch model (18-21 flipped decisions of 1,828 for every variant measured; README, Fast
    # inference), so the defaults stay the recipe every earlier figure was measured with.
    calibration: int = 300  # training sentences whose activations set the int8 ranges
    batch: int = 8  # sentences per calibration item (1: no padding positions in the statistics)
    ignore_heads: bool = False  # keep the per-target classification heads in fp32 (tiny MatMuls)
    ignore_edge_blocks: bool = False  # keep the first and last encoder blocks in fp32
    smooth_quant_alpha: float | None = None  # None: NNCF's default for transformers; -1 turns it off
    fast_bias_correction: bool = True


def _ignored_scope(model, opts: QuantizeOptions):
    """Names of the MatMuls to keep in fp32, found in the IR by their torch module paths."""
    import re

    import nncf

    names = []
    matmuls = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"]
    if opts.ignore_heads:
        names += [n for n in matmuls if re.search(r"(^|\.)heads\.\d+", n)]
    if opts.ignore_edge_blocks:
        blocks = sorted({int(m.group(1)) for n in matmuls if (m := re.search(r"\.layer\.(\d+)\.", n))})
        if blocks:
            edge = {blocks[0], blocks[-1]}
            names += [n for n in matmuls if (m := re.search(r"\.layer\.(\d+)\.", n)) and int(m.group(1)) in edge]
    return nncf.IgnoredScope(names=sorted(set(names)), validate=False) if names else None


def quantize_int8(
    folder: Path, calibration_batches: list[dict[str, np.ndarray]], opts: QuantizeOptions | None = None
) -> Path:
    """NNCF post-training int8 quantisation of the fp32 IR (per-channel weights)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    opts = opts or QuantizeOptions()
    core = ov.Core()
    fp32 = core.read_model(Path(folder) / OV_DIR / "model.xml")
    advanced = None
    if opts.smooth_quant_alpha is not None:
        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=opts.smooth_quant_alpha)
        )
    quantized = nncf.quantize(
        fp32,
        nncf.Dataset(calibration_batches),
        model_type=nncf.ModelType.TRANSFORMER,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calibration_batches),  # items are batches of sentences
        fast_bias_correction=opts.fast_bias_correction,
        ignored_scope=_ignored_scope(fp32, opts),
        advanced_parameters=advanced,
    )
    path = Path(folder) / OV_DIR / "model_int8.xml"
    ov.save_model(quantized, path, compress_to_fp16=False)
    return path


def near_ties(logits: np.ndarray, head_sizes: Sequence[int], margins: np.ndarray) -> np.ndarray:
    """Row indices whose top-two logit margin is below the head's margin for at least one head."""
    hit = np.zeros(len(logits), dtype=bool)
    start = 0
    for size, margin in zip(head_sizes, margins):
        head = logits[:, start : start + size]
        start += size
        if size < 2:
            continue
        top2 = np.partition(head, size - 2, axis=1)[:, -2:]
        hit |= (top2[:, 1] - top2[:, 0]) < margin
    return np.flatnonzero(hit)


def agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[float]:
    """Share of rows whose argmax is the same, per target."""
    return [float((r.argmax(1) == c.argmax(1)).mean()) if len(r) else 1.0 for r, c in zip(reference, candidate)]
