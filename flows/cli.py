"""The ``steelqc`` command line. Every command takes ``--json`` and then prints one JSON object on stdout;
logs and progress go to stderr. Exit codes: 0 done, 1 done but nothing usable (or ``--strict`` and faults),
2 bad input or usage."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tasks.config import Settings, load_settings

app = typer.Typer(
    name="steelqc",
    help="Train, check and safely deploy a steel-surface defect classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("steelqc")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")]


class _State:
    settings: Settings | None = None
    config: Path | None = None


_state = _State()


@app.callback()
def main(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file (also STEELQC_CONFIG).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")] = False,
) -> None:
    """steelqc: MLOps for steel-surface defect classification."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _state.config = config


def settings(**overrides: Any) -> Settings:
    """Settings for this invocation (YAML from --config, then env, then overrides)."""
    try:
        return load_settings(_state.config, **overrides)
    except Exception as exc:  # pydantic ValidationError, missing YAML file
        _fail(f"invalid settings: {exc}", as_json="--json" in sys.argv)
        raise  # unreachable


def emit(summary: dict, as_json: bool) -> None:
    """Print the summary: one JSON object on stdout, or a readable listing."""
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        sys.stdout.flush()
        return
    for key, value in summary.items():
        text = json.dumps(value, default=str) if isinstance(value, dict | list) else value
        typer.echo(f"{key:>20}: {text}")


def _fail(message: str, as_json: bool, code: int = 2, **extra: Any) -> None:
    log.error(message)
    if as_json:
        emit({"error": message, **extra}, True)
    raise typer.Exit(code)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write train.csv and train_images/ into.")],
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Number of images.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 42,
    mix: Annotated[
        str | None, typer.Option(help="Label mix, e.g. '0=0.5,1=0.2,2=0.1,3=0.1,4=0.1' (default Severstal-like).")
    ] = None,
    multi_defect_rate: Annotated[float, typer.Option(help="Share of defect images with a second class.")] = 0.05,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing data set in --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate a Severstal-format data set (steel-like texture, four defect kinds, RLE masks)."""
    from tasks.synth import generate_dataset, parse_mix

    cfg = settings()
    try:
        summary = generate_dataset(
            out,
            n_images=n_images,
            seed=seed,
            mix=parse_mix(mix) if mix else None,
            shape=cfg.image_shape,
            multi_defect_rate=multi_defect_rate,
            class_names=cfg.class_names,
            label_priority=cfg.priority_ids(),
            overwrite=overwrite,
        )
    except ValueError as exc:
        _fail(str(exc), as_json)
    emit(summary, as_json)


@app.command()
def ingest(
    data: Annotated[Path, typer.Argument(help="Data directory (Severstal layout or class folders).")],
    fmt: Annotated[str, typer.Option("--format", help="auto, severstal or folders.")] = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: a new run folder under STEELQC_HOME).")
    ] = None,
    critical_class: Annotated[
        str | None, typer.Option("--critical-class", help="Name of the safety-critical class.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when anything was quarantined.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate a data set: manifest, quarantine list (with reasons) and fingerprint."""
    from tasks.ingest import IngestError, check_out_dir, new_run_dir, write_outputs
    from tasks.ingest import ingest as run_ingest

    cfg = settings()
    if fmt not in ("auto", "severstal", "folders"):
        _fail(f"--format must be auto, severstal or folders, not {fmt!r}", as_json)
    try:
        if out is not None:
            check_out_dir(out, data)
        else:
            check_out_dir(cfg.runs_dir, data)
        result = run_ingest(data, cfg, fmt, critical_class)  # type: ignore[arg-type]
        summary = write_outputs(result, out or new_run_dir(cfg, "ingest"))
    except IngestError as exc:
        _fail(str(exc), as_json, file=exc.file, row=exc.row)
    log.info(
        "ingest: %d valid, %d quarantined; manifest %s", summary["valid"], summary["quarantined"], summary["manifest"]
    )
    emit(summary, as_json)
    if summary["valid"] == 0:
        log.error("no valid image in %s; see %s", data, summary["quarantine"])
        raise typer.Exit(1)
    if strict and summary["quarantined"]:
        raise typer.Exit(1)


@app.command()
def split(
    run_dir: Annotated[Path, typer.Argument(help="Run folder holding manifest.csv (from `steelqc ingest`).")],
    ledger: Annotated[
        bool, typer.Option(help="Keep earlier assignments sticky via STEELQC_HOME/split_ledger.csv.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Split a manifest into train/val/test (stratified, stable under growth) in RUN_DIR/splits/."""
    from tasks.ingest import load_manifest
    from tasks.split import SplitError, assign_splits, read_ledger, split_counts, update_ledger, write_splits

    cfg = settings()
    manifest_path = run_dir / "manifest.csv"
    if not manifest_path.is_file():
        _fail(f"{manifest_path} not found (run `steelqc ingest` first)", as_json)
    manifest = load_manifest(manifest_path)
    ledger_path = cfg.home / "split_ledger.csv"
    try:
        previous = read_ledger(ledger_path) if ledger else {}
        assignment, warnings = assign_splits(manifest, cfg.split, cfg.seed, previous)
    except SplitError as exc:
        _fail(str(exc), as_json)
    paths = write_splits(manifest, assignment, run_dir)
    added = update_ledger(ledger_path, manifest, assignment) if ledger else 0
    emit(
        {
            "splits": paths,
            "counts": split_counts(manifest, assignment),
            "warnings": warnings,
            "ledger": str(ledger_path) if ledger else None,
            "ledger_added": added,
        },
        as_json,
    )


@app.command()
def demo(
    n_images: Annotated[int, typer.Option("--n-images", min=10, help="Images to generate.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    as_json: JsonOpt = False,
) -> None:
    """Generate a data set, ingest it and split it; print where everything is."""
    from tasks.ingest import ingest as run_ingest
    from tasks.ingest import new_run_dir, write_outputs
    from tasks.split import assign_splits, read_ledger, split_counts, update_ledger, write_splits
    from tasks.synth import generate_dataset

    cfg = settings()
    data = cfg.home / "demo-data" / f"seed{seed}-n{n_images}"
    if (data / "train.csv").exists():
        log.info("reusing generated data in %s", data)
        synth_summary = {"out": str(data), "reused": True}
    else:
        synth_summary = generate_dataset(data, n_images=n_images, seed=seed, shape=cfg.image_shape)
    result = run_ingest(data, cfg)
    run_dir = new_run_dir(cfg, "demo")
    ingest_summary = write_outputs(result, run_dir)
    ledger_path = cfg.home / "split_ledger.csv"
    assignment, warnings = assign_splits(result.manifest, cfg.split, cfg.seed, read_ledger(ledger_path))
    paths = write_splits(result.manifest, assignment, run_dir)
    update_ledger(ledger_path, result.manifest, assignment)
    summary = {
        "data": str(data),
        "run_dir": str(run_dir),
        "synth": synth_summary,
        "ingest": ingest_summary,
        "splits": {"paths": paths, "counts": split_counts(result.manifest, assignment), "warnings": warnings},
        "next": "the training pipeline comes with issue #3; for now inspect the manifest and splits above",
    }
    emit(summary, as_json)


if __name__ == "__main__":  # pragma: no cover
    app()
