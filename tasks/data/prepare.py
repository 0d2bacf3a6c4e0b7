"""A data set into a run folder, and a run folder's split: the two data steps `steelqc ingest` / `steelqc split`
and the flows' ``ingest`` / ``split`` steps share (written once, here)."""

from __future__ import annotations

from pathlib import Path

from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import (
    IngestError,
    IngestResult,
    check_out_dir,
    ingest,
    load_manifest,
    new_run_dir,
    write_outputs,
)
from steelqc.tasks.data.split import assign_splits, read_ledger, split_counts, update_ledger, write_splits


def ingest_to_folder(
    data: Path,
    settings: Settings,
    fmt: str = "auto",
    critical_class: str | None = None,
    out: Path | None = None,
    prefix: str = "ingest",
    require_valid: bool = False,
) -> tuple[IngestResult, dict]:
    """Validate ``data`` and write manifest, masks, quarantine and ``ingest.json`` into ``out`` (default: a new run
    folder ``STEELQC_HOME/runs/<prefix>-*``). An output folder inside ``data`` is refused (``IngestError``), and so,
    with ``require_valid``, is a data set without one valid image (then nothing is written)."""
    check_out_dir(out if out is not None else settings.runs_dir, data)
    result = ingest(data, settings, fmt, critical_class)  # type: ignore[arg-type]
    if require_valid and result.manifest.empty:
        raise IngestError(f"no valid image in {data}; nothing to train on")
    return result, write_outputs(result, out if out is not None else new_run_dir(settings, prefix))


def split_run_folder(run_dir: Path, settings: Settings, ledger: bool = True) -> dict:
    """Split ``run_dir/manifest.csv`` into ``run_dir/splits/{train,val,test}.csv`` (stratified, stable under
    growth); with ``ledger`` earlier assignments stay sticky through ``STEELQC_HOME/split_ledger.csv``.

    Returns ``splits`` (paths), ``counts`` ({split: {class: n}}), ``warnings``, ``ledger`` (its path or None) and
    ``ledger_added``. Raises ``SplitError`` on an unreadable ledger or an impossible split."""
    manifest = load_manifest(Path(run_dir) / "manifest.csv")
    ledger_path = settings.home / "split_ledger.csv"
    previous = read_ledger(ledger_path) if ledger else {}
    assignment, warnings = assign_splits(manifest, settings.split, settings.seed, previous)
    paths = write_splits(manifest, assignment, Path(run_dir))
    return {
        "splits": paths,
        "counts": split_counts(manifest, assignment),
        "warnings": warnings,
        "ledger": str(ledger_path) if ledger else None,
        "ledger_added": update_ledger(ledger_path, manifest, assignment) if ledger else 0,
    }
