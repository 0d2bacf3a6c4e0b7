"""Score a registered or logged model on a data set (``steelqc evaluate``) and batch inference (``predict``)."""

from __future__ import annotations

from pathlib import Path

from steelqc.model_registry import packaging
from steelqc.model_registry.reference import reference_of_uri
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings
from steelqc.tasks.data.ingest import ingest, new_run_dir, write_outputs
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.assess import assess
from steelqc.tasks.features import Reference, extract
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


def predict_images(model_uri: str, paths: list[Path], settings: Settings) -> dict:
    """One record per image, in the order given: ``image``, ``label``, ``probabilities``, ``critical``, and the
    ``novelty`` score and ``novel`` flag when the model version carries a drift reference (else null).

    An image that cannot be read (missing, not a file, corrupt) gets ``label``, ``probabilities`` and ``critical``
    null and an ``error``; the others are predicted as usual. ``failed`` counts those records.
    """
    configure(settings)
    model = packaging.load(model_uri)
    reference = reference_of_uri(client(settings), model_uri)
    errors = {str(p): fault for p in paths if (fault := unreadable_image(Path(p)))}
    good = [str(p) for p in paths if str(p) not in errors]
    by_image = iter(_predicted(model, good, reference, settings) if good else [])
    records = [
        {"image": str(p), "label": None, "probabilities": None, "critical": None, "error": errors[str(p)]}
        if str(p) in errors
        else next(by_image)
        for p in paths
    ]
    return {
        "model": model_uri,
        "threshold": model.threshold,
        "critical_class": model.label_space.critical_class,
        "novelty_threshold": reference.novelty.threshold if reference is not None else None,
        "predictions": records,
        "failed": sum(bool(r.get("error")) for r in records),
        "novel": sum(bool(r.get("novel")) for r in records),
    }


def _predicted(model: packaging.SteelDefectModel, paths: list[str], reference: Reference | None, settings: Settings):
    """Records of readable images: one pass of the model gives the probabilities and the embedding."""
    raw = extract(
        model.model, model.architecture, model.spec, paths,
        batch_size=settings.monitor_batch_size, device=model.device, progress=False,
    )  # fmt: skip
    chosen = model.decide(raw.proba)
    scores = reference.novelty.score(raw.layers) if reference is not None else [None] * len(paths)
    novel = reference.novelty.is_novel(scores) if reference is not None else [None] * len(paths)
    names, space = model.label_space.names, model.label_space
    for path, row, index, score, flag, error in zip(paths, raw.proba, chosen, scores, novel, raw.errors, strict=True):
        if error:
            fault = f"unreadable image: {error}"
            yield {"image": path, "label": None, "probabilities": None, "critical": None, "error": fault}
            continue
        yield {
            "image": path,
            "label": names[index],
            "label_id": space.id_of(int(index)),
            "probabilities": dict(zip(names, map(float, row), strict=True)),
            "critical": bool(index == space.critical_index),
            "novelty": None if score is None else round(float(score), 4),
            "novel": None if flag is None else bool(flag),
        }


def unreadable_image(path: Path) -> str | None:
    """Why ``path`` cannot be predicted before it is opened (missing, not a regular file), in words for the error
    record; a file that does not decode gets its reason from the feature pass, which decodes each image once."""
    if not path.is_file():
        return "no such file" if not path.exists() else "not a regular file"
    return None
