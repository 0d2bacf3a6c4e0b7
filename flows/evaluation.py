"""Score a registered or logged model on a data set (``steelqc evaluate``) and batch inference (``predict``)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from steelqc.model_registry import packaging
from steelqc.model_registry.reference import reference_of_uri
from steelqc.model_registry.store import client, configure
from steelqc.monitoring.inbox import InboxError, is_listed_name, open_inbox
from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import ingest, new_run_dir, write_outputs
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.assess import assess
from steelqc.tasks.model.batch_predict import (
    DecisionLog,
    Loaded,
    Loader,
    Scorer,
    collect,
    exported_scorer,
    file_loader,
    is_export_dir,
    predict_stream,
    torch_scorer,
    walk_images,
)
from steelqc.tasks.model.inference import available_cpus
from steelqc.tasks.model.models import gradcam_target_layer


def evaluate_model(model_uri: str, data: Path, settings: Settings, fmt: str = "auto") -> dict:
    """Ingest ``data`` (into a new run folder), then score every valid image with the model at ``model_uri``."""
    configure(settings)
    model = packaging.load(model_uri)
    result = ingest(data, settings, fmt, model.label_space.critical_class)  # type: ignore[arg-type]
    data_space = LabelSpace(result.class_names, result.critical_class)
    if data_space.class_names != model.label_space.class_names:
        raise ValueError(
            f"the data's classes {data_space.class_names} differ from the model's {model.label_space.class_names}"
        )
    run_dir = new_run_dir(settings, "evaluate")
    ingest_summary = write_outputs(result, run_dir)
    masks = result.masks if len(result.masks) else None
    scored = assess(
        model.model,
        gradcam_target_layer(model.model, model.architecture),
        result.manifest,
        model.label_space,
        model.spec,
        run_dir / "evaluation",
        model.threshold,
        masks=masks,
        seed=settings.seed,
        device=model.device,
        bootstrap_samples=settings.bootstrap_samples,
    )
    metrics = {k: v for k, v in scored["metrics"].items() if k != "predictions"}
    return {
        "model": model_uri,
        "data": str(data),
        "n_images": len(result.manifest),
        "quarantined": ingest_summary["quarantined"],
        "threshold": model.threshold,
        "metrics": metrics,
        "artifacts": scored["artifacts"],
        "run_dir": str(run_dir),
    }


def predict_images(
    model_uri: str,
    paths: Iterable[str | Path],
    settings: Settings,
    *,
    csv_path: Path | None = None,
    progress: bool = False,
    log_decisions: bool = True,
    fmt: str | None = None,
) -> dict:
    """One record per image, in the order given (a folder: its images in sorted order, walked lazily; an
    ``s3://bucket/prefix``: its images, fetched one at a time): ``image``, ``sha256``, ``label`` (the decision
    under the calibrated threshold), ``probabilities``, ``critical``, ``critical_probability``, and the
    ``novelty`` score and ``novel`` flag when the model version carries a drift reference (else null). Images
    stream through :func:`~steelqc.tasks.model.batch_predict.predict_stream` (bounded memory, decoding on a thread
    pool while the model runs). An unreadable image (missing, not a file, corrupt) gets null ``label``,
    ``probabilities``, ``critical`` and an ``error`` (``failed`` counts them); the others are predicted as usual.
    Every record goes to the decision log (``decisions_dir``, default STEELQC_HOME/decisions) unless
    ``log_decisions`` is off, and to ``csv_path`` when given. ``fmt``: an export directory's format (default: its
    recommended one)."""
    configure(settings)
    scorer = load_scorer(model_uri, settings, fmt)
    folder = settings.decisions_dir or settings.home / "decisions"
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="steelqc-predict-")))
        decisions = stack.enter_context(DecisionLog(folder, scorer.meta())) if log_decisions else None
        stream = predict_stream(
            _items(paths, settings), scorer, _loader(settings, tmp), batch_size=settings.monitor_batch_size,
            workers=min(4, available_cpus()), max_pixels=settings.max_image_pixels,
        )  # fmt: skip
        records = collect(stream, decisions, csv_path, scorer.label_space.names, progress)
    seconds = time.perf_counter() - started
    return {
        **scorer.meta(),
        "novelty_threshold": scorer.novelty_threshold,
        "predictions": records,
        "n_images": len(records),
        "failed": sum(bool(r.get("error")) for r in records),
        "novel": sum(bool(r.get("novel")) for r in records),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(records) / seconds, 2) if seconds > 0 else None,
        "decision_log": [str(p) for p in decisions.paths] if decisions is not None else [],
        "csv": str(csv_path) if csv_path else None,
    }


def load_scorer(model_uri: str, settings: Settings, fmt: str | None = None) -> Scorer:
    """The :class:`~steelqc.tasks.model.batch_predict.Scorer` of an export directory (ONNX / OpenVINO in ``fmt``,
    default the recommended one; no novelty score), or of a torch model (a registered ``models:/`` URI, a run URI or
    a model folder) with its version's novelty reference when it has one."""
    if is_export_dir(model_uri):
        return exported_scorer(model_uri, fmt, threads=available_cpus())
    if fmt is not None:
        raise ValueError(f"--format {fmt} applies to an export directory (steelqc export); {model_uri} is not one")
    model = packaging.load(model_uri)
    registry = client(settings)
    reference = reference_of_uri(registry, model_uri)
    version = packaging.registered_version(model_uri, registry)
    return torch_scorer(
        model.model, model.architecture, model.label_space, model.spec, model.threshold, model_uri,
        model_version=str(version.version) if version is not None else None,
        device=model.device, novelty=reference.novelty if reference is not None else None,
    )  # fmt: skip


def _items(paths: Iterable[str | Path], settings: Settings) -> Iterator[Any]:
    """Each input lazily: a folder's images (walked in sorted order), an s3:// prefix's images (listed, then
    fetched one at a time by the loader; one that names a single object: that object; one that names nothing: an
    error record), any other path as given (a missing one gets its error record)."""
    for entry in paths:
        text = str(entry)
        if text.startswith("s3://"):
            inbox = open_inbox(text, settings)
            listed = inbox.list_items()
            yield from ((inbox, item) for item in listed) if listed else [(inbox, None)]
        elif Path(text).is_dir():
            yield from walk_images(Path(text), is_listed_name)
        else:
            yield Path(text)


def _loader(settings: Settings, tmp: Path) -> Loader:
    """Local paths read directly; S3 objects downloaded (checked against their listed ETag), read and removed."""
    files = file_loader(settings.max_image_bytes)

    def load(item: Any) -> Loaded:
        if not isinstance(item, tuple):
            return files(item)
        inbox, entry = item
        if entry is None:
            return Loaded(inbox.describe(), error="no image object at or under this s3:// uri")
        try:
            local = inbox.fetch(entry, tmp)
        except InboxError as exc:
            return Loaded(entry.uri, error=str(exc))
        try:
            return Loaded(entry.uri, local.read_bytes())
        finally:
            local.unlink(missing_ok=True)

    return load
