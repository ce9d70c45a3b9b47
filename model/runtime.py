"""Fast CPU inference with OpenVINO: export, int8 quantisation, validation, and the backend.

A saved version carries `openvino/model.xml` (fp32 IR) and, when it passed validation,
`openvino/model_int8.xml` (NNCF post-training quantisation, calibrated on training texts).
`optimise()` picks the precision: int8 when its argmax agrees with the fp32 torch model on at
least 99% of the dev split for every target and F_avg stays within 0.5 points, otherwise bf16
(fp32 IR run with bf16 inference precision). The choice and the agreement figures are stored in
stancewatch.json under "runtime".

The backend needs only numpy and openvino (plus tokenizers in the predictor): serving and
scoring processes that use it never import torch or transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stancewatch import settings

log = logging.getLogger(__name__)

OV_DIR = "openvino"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "pool_mask")
LENGTH_STEP = 8  # pad sequence lengths to a multiple of this: fewer distinct shapes


class OpenVINOBackend:
    """Runs the exported IR; several batches in flight so two cores stay busy."""

    name = "openvino"

    def __init__(self, folder: Path, precision: str, threads: int, streams: int | None = None):
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


def agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[float]:
    """Share of rows whose argmax is the same, per target."""
    return [float((r.argmax(1) == c.argmax(1)).mean()) if len(r) else 1.0 for r, c in zip(reference, candidate)]
