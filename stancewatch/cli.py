"""The `stancewatch` command line: train, evaluate, predict, manage versions, serve."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(
    help="Sentence-level stance classification for news text.", no_args_is_help=True, pretty_exceptions_enable=False
)
models_app = typer.Typer(help="Model versions in the BentoML model store.", no_args_is_help=True)
labels_app = typer.Typer(help="Labelled data.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(labels_app, name="labels")
console = Console(soft_wrap=True)
BACKEND_HELP = "auto (the precision chosen at training: OpenVINO int8/bf16, else torch) | torch | openvino."
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _load_data(paths: list[Path], schema_file: Optional[Path], drop_conflicts: bool):
    from stancewatch.model.schema import Schema, SchemaError
    from stancewatch.training.data import DataValidationError, load_labelled

    try:
        schema = Schema.load(schema_file) if schema_file else None
    except (SchemaError, OSError) as exc:
        _fail(str(exc), 2)
    try:
        data = load_labelled(paths, schema=schema, drop_conflicts=drop_conflicts)
    except DataValidationError as exc:
        _fail(str(exc), 2)
    return data


def _print_data_report(data, label: str) -> None:
    r = data.report
    console.print(
        f"{label}: {len(data.examples)} examples from {r.rows} rows ({r.duplicates_dropped} exact duplicates dropped)",
        highlight=False,
    )
    for line in r.conflicts_dropped:
        console.print(f"  dropped conflicting label: {line}", highlight=False)
    for w in r.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)


def _print_schema(schema) -> None:
    for t in schema.targets:
        console.print(f"  target {t.name}: labels {', '.join(t.labels)}", highlight=False)


def _print_metrics(report: dict) -> None:
    table = Table(title="dev metrics")
    table.add_column("target")
    table.add_column("F_avg", justify="right")
    table.add_column("macro-F1", justify="right")
    table.add_column("ECE", justify="right")
    table.add_column("n", justify="right")
    for name, t in report["targets"].items():
        table.add_row(name, f"{100 * t['f_avg']:.2f}", f"{100 * t['macro_f1']:.2f}", f"{t['ece']:.3f}", str(t["n"]))
    table.add_row("mean", f"{100 * report['mean_f_avg']:.2f}", f"{100 * report['mean_macro_f1']:.2f}", "", "")
    console.print(table)


@app.command()
def train(
    data: list[Path] = typer.Option(
        None, "--data", help="Labelled CSV/JSONL/Parquet (repeatable). Default: the bundled corpus."
    ),
    dev: Optional[list[Path]] = typer.Option(
        None,
        "--dev",
        help="Held-out file(s), cut into dev, calibration and gate "
        "parts; default: held out from --data. Must share no row with --data.",
    ),
    schema: Optional[Path] = typer.Option(None, "--schema", help="Schema YAML/JSON (targets and labels)."),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="Local Hugging Face encoder folder."),
    config: Optional[Path] = typer.Option(None, "--config", help="TrainConfig as YAML/JSON."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimiser steps (smoke tests)."),
    class_weighting: Optional[bool] = typer.Option(None, "--class-weighting/--no-class-weighting"),
    device: Optional[str] = typer.Option(None, "--device", help="Training device: auto (default), cpu, cuda, cuda:N."),
    members: Optional[int] = typer.Option(None, "--members", help="Runs whose weights are averaged (1: a single run)."),
    drop_conflicts: bool = typer.Option(False, "--drop-conflicts", help="Drop rows whose labels conflict (listed)."),
    merge: bool = typer.Option(
        False,
        "--merge",
        help="Add the production version's examples (new labels win); "
        "its dev, calibration and gate rows stay in those parts.",
    ),
    promote: str = typer.Option("auto", "--promote", help="auto | always | never"),
    margin: float = typer.Option(
        0.5, "--margin", help="auto: promote unless mean F_avg on the gate split drops by more than this many points."
    ),
) -> None:
    """Train a new model version and print its tag and dev metrics."""
    from stancewatch.training.config import TrainConfig
    from stancewatch.training.data import DEFAULT_CORPUS

    if promote not in ("auto", "always", "never"):
        _fail(f"--promote must be auto, always or never, got {promote!r}", 2)
    overrides = {
        "epochs": epochs,
        "seed": seed,
        "max_steps": max_steps,
        "class_weighting": class_weighting,
        "device": device,
        "members": members,
        "base_model": str(base_model) if base_model else None,
    }
    try:
        cfg = (
            TrainConfig.from_file(config, **overrides)
            if config
            else TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
        )
    except (ValueError, TypeError, OSError) as exc:
        _fail(str(exc), 2)
    paths = list(data) if data else list(DEFAULT_CORPUS)
    extra_metadata = {}
    if merge:
        labelled, extra_metadata = _merge_with_production(paths, schema, drop_conflicts)
    else:
        labelled = _load_data(paths, schema, drop_conflicts)
    _print_data_report(labelled, "training data")
    console.print(("schema inferred from the data:" if labelled.report.schema_inferred else "schema:"), highlight=False)
    _print_schema(labelled.schema)
    dev_data = None
    if dev:
        from stancewatch.training.data import DataValidationError, check_disjoint, load_labelled

        try:
            dev_data = load_labelled(dev, schema=labelled.schema, drop_conflicts=drop_conflicts)
            check_disjoint(labelled, dev_data)  # before training, not after it
        except DataValidationError as exc:
            _fail(str(exc), 2)
        _print_data_report(dev_data, "dev data")

    from stancewatch.training.train import train as run_training

    result = run_training(labelled, cfg, dev=dev_data, promote=promote, margin=margin, extra_metadata=extra_metadata)
    console.print(f"new model version: [bold]{result.tag}[/]", highlight=False)
    _print_metrics(result.report)
    console.print(f"promotion: {result.metadata['promotion']['message']}", highlight=False)


def _merge_with_production(paths: list[Path], schema_file: Optional[Path], drop_conflicts: bool):
    from stancewatch.model import store
    from stancewatch.model.schema import Schema
    from stancewatch.training.data import DataValidationError, load_labelled, load_version_data, merge

    try:
        prod = store.resolve(None)
    except store.ModelNotFound as exc:
        _fail(f"--merge needs a production (or latest) version: {exc}")
    folder = Path(prod.path)
    prod_schema = Schema.load(folder / "schema.json")
    if not (folder / "data" / "train.jsonl").exists():
        _fail(f"{prod.tag} carries no training data (trained before data was stored with versions)")
    try:
        old = load_version_data(folder, prod_schema)  # each example remembers its part (train/dev/...)
        new = load_labelled(
            paths, schema=Schema.load(schema_file) if schema_file else prod_schema, drop_conflicts=drop_conflicts
        )
    except DataValidationError as exc:
        _fail(str(exc), 2)
    merged, conflicts = merge(old, new)
    console.print(
        f"merging {len(new.examples)} new examples into the {len(old.examples)} of {prod.tag}: "
        f"{len(merged.examples)} examples, {len(conflicts)} label(s) overridden by the new data",
        highlight=False,
    )
    for line in conflicts:
        console.print(f"  overridden: {line}", highlight=False)
    parts = {role: sum(1 for r in old.roles.values() if r == role) for role in sorted(set(old.roles.values()))}
    console.print("  kept in their parts: " + ", ".join(f"{n} {role}" for role, n in parts.items()), highlight=False)
    return merged, {
        "merge": {
            "base_version": str(prod.tag),
            "base_examples": len(old.examples),
            "new_examples": len(new.examples),
            "overridden_labels": len(conflicts),
            "base_parts": parts,
        }
    }


@app.command("eval")
def evaluate(
    data: list[Path] = typer.Option(..., "--data", help="Labelled file(s) to evaluate on."),
    model: Optional[str] = typer.Option(None, "--model", help="Tag or artefact folder (default: production)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Write report.json/.md and PNGs here."),
) -> None:
    """Evaluate a model version on any labelled file (with the model's own schema)."""
    from stancewatch.training.data import DataValidationError, load_labelled
    from stancewatch.training.evaluate import evaluate_predictions, gold_lists, write_report

    m = _load_model(model, backend)
    try:
        labelled = load_labelled(data, schema=m.schema)
    except DataValidationError as exc:
        _fail(str(exc), 2)
    ex = labelled.examples
    probs, _ = m.predict_arrays([e.text for e in ex], [e.context or None for e in ex])
    report = evaluate_predictions(m.schema, gold_lists(ex, m.schema), dict(zip(m.schema.target_names, probs)))
    report["model"] = m.tag
    _print_metrics(report)
    if "pooled_f_avg" in report:
        console.print(f"pooled F_avg: {100 * report['pooled_f_avg']:.2f}")
    if out:
        write_report(report, out, title=f"Evaluation of {m.tag}")
        console.print(f"report written to {out}", highlight=False)


def _check_backend(backend: str) -> None:
    from stancewatch.model.predictor import BACKENDS

    if backend not in BACKENDS:
        _fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}", 2)


def _load_model(ref: Optional[str], backend: str = "auto"):
    from stancewatch.model.predictor import StanceModel
    from stancewatch.model.store import ModelNotFound

    _check_backend(backend)
    try:
        return StanceModel.load(ref, backend=backend)
    except (ModelNotFound, FileNotFoundError) as exc:
        _fail(str(exc), 1)


def _locate_model(ref: Optional[str], backend: str = "auto") -> tuple[Path, str]:
    """The folder and tag of the model `ref` names, its files checked but no model built: the Ray
    engine's driver runs no model (its actors load their own), and compiling one there took CPU from
    the actors at start-up. A missing file fails here, before Ray starts, as it did in the driver."""
    from stancewatch.model.predictor import check_folder, locate
    from stancewatch.model.store import ModelNotFound

    _check_backend(backend)
    try:
        folder, tag = locate(ref)
        check_folder(folder, backend)
    except (ModelNotFound, FileNotFoundError) as exc:
        _fail(str(exc), 1)
    return folder, tag


@app.command()
def predict(
    sentences: Optional[list[str]] = typer.Argument(None, help="Sentences to classify."),
    document: Optional[Path] = typer.Option(
        None, "--document", help="A text file: split into sentences, each read with the one before."
    ),
    model: Optional[str] = typer.Option(None, "--model", help="Tag or artefact folder (default: production)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Classify sentences (or a whole document) and print a table."""
    from stancewatch.model.splitter import split_sentences, with_context

    if not sentences and not document:
        _fail("give sentences or --document FILE", 2)
    texts, contexts = list(sentences or []), [None] * len(sentences or [])
    if document:
        try:
            body = document.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read {document}: {exc}", 2)
        parts = split_sentences(body)
        texts += [s.text for s in parts]
        contexts += with_context(parts)
    if any(not t.strip() for t in texts):
        _fail("empty sentence given", 2)
    m = _load_model(model, backend)
    preds = m.predict(texts, contexts)
    if as_json:
        print(json.dumps({"model": m.tag, "sentences": [p.to_dict() for p in preds]}, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"model {m.tag}", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("sentence", overflow="fold", ratio=3)
    for name in m.schema.target_names:
        table.add_column(name, ratio=1)
    for i, p in enumerate(preds, start=1):
        cells = []
        for name in m.schema.target_names:
            s = p.stances[name]
            cells.append(
                f"{s.label} ({s.probs[s.label]:.2f})" if p.supported else f"- (language {p.language}: not read)"
            )
        table.add_row(str(i), p.text + (" [truncated]" if p.truncated else ""), *cells)
    console.print(table)


@app.command()
def crossval(
    data: list[Path] = typer.Option(None, "--data", help="Labelled file(s); default: the bundled corpus."),
    schema: Optional[Path] = typer.Option(None, "--schema"),
    folds: int = typer.Option(5, "--folds"),
    config: Optional[Path] = typer.Option(None, "--config"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON result here."),
    by_article: Optional[bool] = typer.Option(
        None,
        "--by-article/--by-sentence",
        help="Folds of whole articles (doc_id column) or of sentences; default: by article when the data has doc_id.",
    ),
) -> None:
    """k-fold cross-validation of the training recipe; saves no model."""
    from stancewatch.training.config import TrainConfig
    from stancewatch.training.crossval import cross_validate
    from stancewatch.training.data import DEFAULT_CORPUS, has_groups

    labelled = _load_data(list(data) if data else list(DEFAULT_CORPUS), schema, False)
    cfg = TrainConfig.from_file(config) if config else TrainConfig()
    if by_article is None:
        by_article = has_groups(labelled.examples)
    if by_article and not has_groups(labelled.examples):
        _fail("--by-article needs a doc_id column naming each sentence's article", 2)
    console.print(
        f"{folds}-fold cross-validation, folds {'by article' if by_article else 'by sentence'}", highlight=False
    )
    try:
        result = cross_validate(labelled, cfg, folds=folds, by_article=by_article)
    except ValueError as exc:
        _fail(str(exc), 2)
    for name, t in result["targets"].items():
        console.print(
            f"{name}: F_avg {100 * t['f_avg_mean']:.2f} ± {100 * t['f_avg_std']:.2f}, "
            f"macro-F1 {100 * t['macro_f1_mean']:.2f} ± {100 * t['macro_f1_std']:.2f}",
            highlight=False,
        )
    if out:
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")


@app.command()
def suggest(
    inputs: list[Path] = typer.Argument(..., help="Documents: the same inputs as `score` (files, folders, archives)."),
    n: int = typer.Option(200, "--n", help="How many sentences to pick."),
    out: Path = typer.Option(Path("to_label.csv"), "--out"),
    model: Optional[str] = typer.Option(None, "--model", help="Tag (default: production)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    strategy: str = typer.Option("margin", "--strategy", help="margin | entropy"),
    per_doc: int = typer.Option(3, "--per-doc", help="At most this many sentences from one document."),
    max_sentences: int = typer.Option(50_000, "--max-sentences", help="Consider at most this many sentences."),
    text_field: str = typer.Option("text", "--text-field"),
    id_field: str = typer.Option("id", "--id-field"),
) -> None:
    """Pick the sentences the model is least sure about, as a CSV to label next."""
    from stancewatch.scoring.readers import InputError, ReadOptions, Record, iter_items
    from stancewatch.training.suggest import STRATEGIES, candidates, select, write_suggestions

    if strategy not in STRATEGIES:
        _fail(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}", 2)
    m = _load_model(model, backend)
    opts = ReadOptions(text_field=text_field, id_field=id_field)
    try:
        docs = ((item.doc_id, item.text) for item in iter_items(list(inputs), opts) if isinstance(item, Record))
        cands = candidates(m, docs, strategy, max_sentences)
    except InputError as exc:
        _fail(str(exc), 2)
    picked = select(cands, len(m.schema.targets), n, per_doc)
    write_suggestions(picked, m.schema.target_names, m.tag, out)
    console.print(
        f"{len(picked)} of {len(cands)} sentences written to {out} ({len({c.doc_id for c, _ in picked})} documents)",
        highlight=False,
    )


@app.command()
def init(
    force: bool = typer.Option(False, "--force", help="Train even if the store already has a model."),
    background: bool = typer.Option(
        True,
        "--background/--no-background",
        help="After the quick first model, train the full recipe in the background (the service follows production).",
    ),
) -> None:
    """Train the default model on the bundled corpus if the store has no model yet.

    A first start trains the quick recipe (training/config.py FIRST_START: one epoch) so the service can
    answer within minutes, then starts the full default recipe as a background process at low CPU
    priority. When it finishes it goes through the usual promotion gate, and a running service
    switches to it by itself (STANCEWATCH_RELOAD_SECONDS).
    """
    from stancewatch.model import store
    from stancewatch.training.config import FIRST_START

    versions = store.list_versions()
    if versions and not force:
        console.print(
            f"model store already has {len(versions)} version(s); production: "
            f"{store.production_tag() or str(versions[0].tag) + ' (latest)'}",
            highlight=False,
        )
        return
    console.print(
        f"first start: training the quick recipe ({', '.join(f'{k}={v}' for k, v in FIRST_START.items())})",
        highlight=False,
    )
    train(
        data=None,
        dev=None,
        schema=None,
        base_model=None,
        config=None,
        epochs=FIRST_START["epochs"],
        seed=None,
        max_steps=None,
        class_weighting=None,
        device=None,
        members=None,
        drop_conflicts=False,
        merge=False,
        promote="auto",
        margin=0.5,
    )
    if background:
        _train_in_background()


def _train_in_background() -> None:
    """Start `stancewatch train` (the full default recipe) detached, niced, logging to the store."""
    import subprocess

    from stancewatch.model import store

    home = store.bentoml_home()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "stancewatch-full-training.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-c", "from stancewatch.cli import main; main()", "train"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(os.environ),
        )
    (home / "stancewatch-full-training.pid").write_text(f"{proc.pid}\n", encoding="utf-8")
    console.print(
        f"full recipe training in the background (PID {proc.pid}, log {log_path}); the service switches to it "
        "when it passes the promotion gate",
        highlight=False,
    )


# ---- models ---------------------------------------------------------------------------------


@models_app.command("list")
def models_list() -> None:
    """Versions, newest first, with key metrics and the production mark."""
    from stancewatch.model import store

    prod = store.production_tag()
    table = Table()
    table.add_column("tag", no_wrap=True)
    for col in ("created", "base", "train/dev", "mean F_avg", "per target F_avg", "prod"):
        table.add_column(col)
    for m in store.list_versions():
        md = m.info.metadata
        metrics = md.get("metrics", {})
        size = md.get("data_size", {})
        per_target = ", ".join(f"{k} {100 * v['f_avg']:.1f}" for k, v in metrics.items() if isinstance(v, dict))
        table.add_row(
            str(m.tag),
            str(md.get("created_at", m.info.creation_time))[:19],
            str(md.get("base_model", "")),
            f"{size.get('train', '?')}/{size.get('dev', '?')}",
            f"{100 * metrics.get('mean_f_avg', 0):.2f}",
            per_target,
            "*" if str(m.tag) == prod else "",
        )
    console.print(table)


@models_app.command("show")
def models_show(tag: str = typer.Argument(..., help="Version tag.")) -> None:
    """Print a version's stored evaluation report and metadata."""
    from stancewatch.model import store

    try:
        m = store.get(tag)
    except store.ModelNotFound as exc:
        _fail(str(exc))
    report = Path(m.path) / "eval" / "report.md"
    console.print(f"[bold]{m.tag}[/] (production: {store.production_tag() == str(m.tag)})", highlight=False)
    console.print(json.dumps({k: v for k, v in m.info.metadata.items() if k != "schema"}, indent=2), highlight=False)
    if report.exists():
        print(report.read_text(encoding="utf-8"))


@models_app.command("promote")
def models_promote(tag: str = typer.Argument(...)) -> None:
    """Make a version production (atomically)."""
    from stancewatch.model import store

    try:
        console.print(f"production is now {store.promote(tag)}", highlight=False)
    except store.ModelNotFound as exc:
        _fail(str(exc))


@models_app.command("rollback")
def models_rollback() -> None:
    """Return production to the previous production version (which must still be in the store)."""
    from stancewatch.model import store

    try:
        console.print(f"production is now {store.rollback()}", highlight=False)
    except store.ModelNotFound as exc:
        _fail(str(exc))


@labels_app.command("check")
def labels_check(
    files: list[Path] = typer.Argument(..., help="Labelled files to validate."),
    schema: Optional[Path] = typer.Option(None, "--schema"),
    drop_conflicts: bool = typer.Option(False, "--drop-conflicts"),
) -> None:
    """Validate labelled data without training (exit 2 on problems)."""
    data = _load_data(files, schema, drop_conflicts)
    _print_data_report(data, "ok")
    _print_schema(data.schema)
    for target, counts in data.label_counts().items():
        console.print(f"  {target}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(3000, "--port"),
    model: Optional[str] = typer.Option(None, "--model", help="Tag to serve (default: production, else latest)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
) -> None:
    """Serve the HTTP API with BentoML."""
    env = dict(os.environ)
    env["STANCEWATCH_BACKEND"] = backend
    if model:
        env["STANCEWATCH_MODEL"] = model
    root = Path(__file__).resolve().parent.parent
    from stancewatch import settings

    try:
        grace = settings.get("SHUTDOWN_GRACE_S", env)
    except settings.SettingError as exc:
        _fail(str(exc), 2)
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "stancewatch.service.service:StanceService",
        "--host",
        host,
        "--port",
        str(port),
        # On SIGTERM uvicorn waits this long for requests in flight, then cancels them (they get a
        # 503 and the batcher drops their work); without it, it waited for a long document to finish.
        "--timeout-graceful-shutdown",
        str(grace),
    ]
    # Replace this process with the server, so a SIGTERM to this PID (systemd, a container runtime)
    # reaches `bentoml serve` itself instead of orphaning it.
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(root)
    os.execve(sys.executable, cmd, env)


@app.command()
def score(
    inputs: list[Path] = typer.Argument(
        ..., help="JSONL[.gz|.zst], CSV, Parquet, .txt/.md, folders, .zip/.tar/.tar.gz."
    ),
    out: Path = typer.Option(..., "--out", help="Output file; .parquet, .jsonl or .csv chooses the format."),
    model: Optional[str] = typer.Option(None, "--model", help="Tag or artefact folder (default: production)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    unit: str = typer.Option("document", "--unit", help="document: split into sentences | sentence: one per record."),
    text_field: str = typer.Option("text", "--text-field"),
    id_field: str = typer.Option("id", "--id-field"),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted run from its checkpoint."),
    doc_summary: Optional[Path] = typer.Option(
        None, "--doc-summary", help="Also write per-document label shares here."
    ),
    chunk_size: Optional[int] = typer.Option(
        None,
        "--chunk-size",
        help="Records per checkpoint (default 256 documents / 4096 sentences); the same with --engine ray.",
    ),
    max_member_mb: float = typer.Option(
        200, "--max-member-mb", help="Uncompressed size limit per archive member (MB)."
    ),
    keep_fields: str = typer.Option(
        "",
        "--keep-fields",
        help="Input fields copied to every output row and the document summary, e.g. date,outlet,url (a record missing one is a reject).",
    ),
    date_fields: str = typer.Option(
        "date", "--date-fields", help="Kept fields that must be ISO 8601 dates (one that does not parse is a reject)."
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local: this process | ray: model replicas on Ray actors (local Ray or --ray-address).",
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="With --engine ray: ray://host:10001, auto, or none for a local Ray."
    ),
    ray_actors: Optional[int] = typer.Option(
        None, "--ray-actors", help="With --engine ray: model replicas (default: one per node, using all its CPUs)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Score archives of articles (or sentences) into a flat table, resumably."""
    import time

    from tqdm import tqdm

    from stancewatch.scoring.pipeline import UNITS
    from stancewatch.scoring.pipeline import score as run_score
    from stancewatch.scoring.readers import InputError, check_inputs, count_items
    from stancewatch.scoring.writer import OutputError, output_format

    if engine not in ("local", "ray"):
        _fail(f"--engine must be local or ray, got {engine!r}", 2)
    if engine == "local" and (ray_address or ray_actors):
        _fail("--ray-address and --ray-actors need --engine ray", 2)
    if ray_actors is not None and ray_actors < 1:
        _fail("--ray-actors must be at least 1", 2)
    keep = tuple(dict.fromkeys(f.strip() for f in keep_fields.split(",") if f.strip()))
    if unit not in UNITS:
        _fail(f"--unit must be one of {', '.join(UNITS)}, got {unit!r}", 2)
    try:
        check_inputs(list(inputs))
        output_format(out)
        if doc_summary:
            output_format(doc_summary)
    except (InputError, OutputError) as exc:
        _fail(str(exc), 2)
    if engine == "ray":
        model_folder, model_tag = _locate_model(model, backend)
    else:
        m = _load_model(model, backend)
        model_tag = m.tag
    bar = tqdm(
        total=count_items(list(inputs)) if progress else None,
        unit="doc",
        dynamic_ncols=True,
        disable=not progress,
        file=sys.stderr,
        smoothing=0.1,
    )
    started = time.perf_counter()
    seen = {"sentences": 0, "rejected": 0}

    def on_start(items_done: int) -> None:
        bar.initial = bar.n = items_done  # resumed: count only this run's rate

    def on_chunk(done) -> None:
        seen["sentences"] += done.sentences
        seen["rejected"] += done.rejected
        bar.update(done.items)
        bar.set_postfix_str(
            f"{seen['sentences'] / max(time.perf_counter() - started, 1e-9):.0f} sentences/s, "
            f"{seen['rejected']} rejected",
            refresh=False,
        )

    job = dict(
        unit=unit,
        text_field=text_field,
        id_field=id_field,
        resume=resume,
        chunk_size=chunk_size,
        doc_summary=doc_summary,
        max_member_bytes=int(max_member_mb * 1024 * 1024),
        keep_fields=keep,
        date_fields=tuple(f.strip() for f in date_fields.split(",") if f.strip()),
    )
    try:
        if engine == "ray":
            from stancewatch.scoring.ray_engine import RayEngineError, score_ray

            try:
                result = score_ray(
                    list(inputs),
                    out,
                    model_folder,
                    tag=model_tag,
                    backend=backend,
                    ray_address=ray_address,
                    num_actors=ray_actors,
                    on_start=on_start,
                    on_chunk=on_chunk,
                    **job,
                )
            except RayEngineError as exc:
                bar.close()
                _fail(str(exc), 1)
        else:
            result = run_score(list(inputs), out, m, on_start=on_start, on_chunk=on_chunk, **job)
    except (InputError, OutputError, ValueError) as exc:
        bar.close()
        _fail(str(exc), 2)
    bar.close()
    secs = max(result.elapsed_s, 1e-9)
    if result.items_resumed:
        console.print(f"resumed after {result.items_resumed} input records done earlier", highlight=False)
    console.print(
        f"model {model_tag}: {result.documents} documents, {result.sentences} sentences, "
        f"{result.rejected} rejected records in {result.elapsed_s:.1f} s "
        f"({result.documents_this_run / secs:.1f} documents/s, {result.sentences_this_run / secs:.1f} "
        f"sentences/s this run)",
        highlight=False,
    )
    if result.timings:
        t = result.timings
        console.print(
            f"ray: {t['actors_started']} of {t['actors']} actors ready in {t['actors_ready_s']:.1f} s "
            f"(model load {t['model_load_s']} s); "
            f"actors busy {100 * t['actor_utilisation']:.0f}% of the scoring time ({t['actor_busy_s']:.1f} s "
            f"over {t['slices']} slices); the driver waited {t['driver_result_wait_s']:.1f} s for results "
            f"and {t['driver_input_wait_s']:.1f} s for its own reading and splitting",
            highlight=False,
        )
    console.print(
        f"output: {result.out}; rejects: {result.rejects}"
        + (f"; document summary: {doc_summary}" if doc_summary else ""),
        highlight=False,
    )


@app.command()
def report(
    scores: Path = typer.Argument(..., help="A sentence output of `stancewatch score` (.parquet, .jsonl or .csv)."),
    out: Path = typer.Option(..., "--out", help="The HTML file to write (self-contained, opens offline)."),
    by: Optional[str] = typer.Option(None, "--by", help="A kept field to group by, e.g. outlet."),
    over: Optional[str] = typer.Option(None, "--over", help="A kept date field for shares over time, e.g. date."),
    top: int = typer.Option(5, "--top", help="Most confident sentences shown per target and label (0: none)."),
) -> None:
    """Write an HTML report of a scoring output: label shares overall, by group and over time, with counts."""
    import time

    from stancewatch.report import ReportError, build_report

    started = time.perf_counter()
    try:
        t = build_report(scores, out, by=by, over=over, top_k=top)
    except ReportError as exc:
        _fail(str(exc), 2)
    console.print(
        f"report: {out} ({t.documents} documents, {t.sentences} sentences, {time.perf_counter() - started:.1f} s)",
        highlight=False,
    )


def main() -> None:
    from stancewatch.settings import SettingError, load, unknown

    try:
        load()  # a bad STANCEWATCH_* value stops here, named, before any work starts
    except SettingError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None
    for name in unknown():
        Console(stderr=True).print(
            f"[yellow]warning:[/yellow] {name} is not a stancewatch setting (see README, Settings)"
        )
    app()


if __name__ == "__main__":
    main()
