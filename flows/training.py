"""The ``training-pipeline`` Prefect flow: ingest → split → train → evaluate → gates → register/promote.

Thin wiring: the work lives in ``tasks/`` and ``model_registry/``; Prefect tasks pass paths and MLflow run ids,
add retries on I/O steps and publish a markdown artifact with the metrics, the gates and links.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from steelqc.flows.steps import ingest_step, run_folder_step, settings_for, split_step
from steelqc.model_registry import packaging, promotion
from steelqc.model_registry.gates import evaluate_gates
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.model.train import resolve_config

log = logging.getLogger("flows.training")

FLOW_NAME = "training-pipeline"


# ------------------------------------------------------------------------------------------------ tasks


@task(name="start-mlflow-run", retries=2, retry_delay_seconds=2)
def start_run_step(run_dir: str, ingest: dict, cfg: dict, settings_overrides: dict) -> str:
    """Create (or reuse, on resume) the MLflow run of this pipeline run; log params and the data artifacts."""
    from steelqc.tasks.runs import code_version, read_state, write_state

    settings = settings_for(settings_overrides)
    configure(settings)
    state = read_state(Path(run_dir))
    if state.get("mlflow_run_id"):
        return state["mlflow_run_id"]
    tags = {
        "steelqc.fingerprint": ingest["fingerprint"],
        "steelqc.code_version": code_version(),
        "steelqc.data": state.get("data", ""),
        "steelqc.run_dir": run_dir,
    }
    with mlflow.start_run(run_name=Path(run_dir).name, tags=tags) as run:
        mlflow.log_params({f"train.{k}": v for k, v in cfg.items()})
        mlflow.log_params(
            {
                "data.valid": ingest["valid"],
                "data.quarantined": ingest["quarantined"],
                "data.format": ingest["format"],
                "data.critical_class": ingest["critical_class"],
            }
        )
        for name in ("manifest", "quarantine"):
            mlflow.log_artifact(ingest[name], artifact_path="data")
        run_id = run.info.run_id
    write_state(Path(run_dir), mlflow_run_id=run_id)
    return run_id


@task(name="train")
def train_step(run_dir: str, run_id: str, cfg: dict, label_space: dict, resume: bool, settings_overrides: dict) -> dict:
    from steelqc.tasks.model.train import TrainConfig, train_model
    from steelqc.tasks.runs import write_state

    settings = settings_for(settings_overrides)
    configure(settings)
    mlflow_client = client(settings)
    splits = Path(run_dir) / "splits"
    train_df, val_df = (
        pd.read_csv(splits / f"{s}.csv", dtype={"image_id": str, "classes": str}) for s in ("train", "val")
    )

    def on_epoch(epoch: int, figures: dict) -> None:
        for key, value in figures.items():
            if isinstance(value, int | float) and key != "epoch":
                mlflow_client.log_metric(run_id, key, float(value), step=epoch)

    write_state(Path(run_dir), status="training")
    result = train_model(
        train_df,
        val_df,
        LabelSpace.from_dict(label_space),
        TrainConfig.from_dict(cfg),
        Path(run_dir),
        on_epoch=on_epoch,
        resume=resume,
    )
    mlflow_client.log_param(run_id, "weights_used", result.weights_used)
    mlflow_client.log_param(run_id, "device", result.device)
    mlflow_client.set_tag(run_id, "steelqc.best_epoch", str(result.best_epoch))
    write_state(Path(run_dir), status="trained", best_checkpoint=str(result.best_checkpoint))
    return {
        "best_checkpoint": str(result.best_checkpoint),
        "best_epoch": result.best_epoch,
        "best_val_macro_f1": result.best_val_macro_f1,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "weights_used": result.weights_used,
        "seconds": result.seconds,
        "device": result.device,
    }


@task(name="evaluate")
def evaluate_step(run_dir: str, run_id: str, checkpoint: str, settings_overrides: dict) -> dict:
    """Calibrate the critical threshold on validation, assess on test (clean, dim, bright, Grad-CAM)."""
    from steelqc.tasks.data.datasets import InputSpec
    from steelqc.tasks.evaluation.assess import assess, calibrate
    from steelqc.tasks.model.inference import load_model, select_device
    from steelqc.tasks.model.models import gradcam_target_layer

    settings = settings_for(settings_overrides)
    configure(settings)
    device = select_device()
    model, meta = load_model(Path(checkpoint), device)
    label_space = LabelSpace.from_dict(meta["label_space"])
    spec = InputSpec.from_dict(meta["input_spec"])
    splits = Path(run_dir) / "splits"
    val_df, test_df = (
        pd.read_csv(splits / f"{s}.csv", dtype={"image_id": str, "classes": str}) for s in ("val", "test")
    )
    calibration = calibrate(model, val_df, label_space, spec, settings.critical_recall_target, device=device)
    masks_path = Path(run_dir) / "masks.csv"
    masks = pd.read_csv(masks_path, dtype={"image_id": str}) if masks_path.exists() else None
    result = assess(
        model,
        gradcam_target_layer(model, meta["model_name"]),
        test_df,
        label_space,
        spec,
        Path(run_dir) / "evaluation",
        calibration["threshold"],
        masks=masks if masks is not None and len(masks) else None,
        seed=settings.seed,
        device=device,
        bootstrap_samples=settings.bootstrap_samples,
    )
    result["metrics"]["calibration"] = calibration
    Path(result["artifacts"]["metrics"]).write_text(json.dumps(result["metrics"], indent=2))
    mlflow_client = client(settings)
    for key, value in _flat_metrics(result["metrics"]).items():
        mlflow_client.log_metric(run_id, key, value)
    for path in result["artifacts"].values():
        mlflow_client.log_artifact(run_id, path, artifact_path="evaluation")
    return {
        "metrics": result["metrics"],
        "artifacts": result["artifacts"],
        "calibration": calibration,
        "architecture": meta["model_name"],
        "input_spec": meta["input_spec"],
        "label_space": label_space.to_dict(),
    }


@task(name="compare-with-champion")
def champion_step(run_dir: str, label_space: dict, settings_overrides: dict) -> dict | None:
    """Score the current champion on this run's test split (None when there is no champion)."""
    from steelqc.tasks.evaluation.assess import true_indices
    from steelqc.tasks.evaluation.metrics import compute_metrics

    settings = settings_for(settings_overrides)
    configure(settings)
    mlflow_client = client(settings)
    name = settings.registered_model
    version = promotion.alias_version(mlflow_client, name, promotion.CHAMPION)
    if version is None:
        return None
    champion = packaging.load(f"models:/{name}@{promotion.CHAMPION}")
    ours = LabelSpace.from_dict(label_space)
    if champion.label_space != ours:
        return {
            "version": version,
            "comparable": False,
            "reason": f"champion v{version} has label space {champion.label_space.to_dict()}, this run "
            f"{ours.to_dict()}: not comparable; needs approval",
        }
    test_df = pd.read_csv(Path(run_dir) / "splits" / "test.csv", dtype={"image_id": str, "classes": str})
    proba = champion.predict_proba(test_df)
    figures = compute_metrics(true_indices(test_df, ours), proba, ours.names, ours.critical_index, champion.threshold)
    return {
        "version": version,
        "comparable": True,
        "macro_f1": figures["macro_f1"],
        "critical_recall": figures["critical_recall"],
        "critical_precision": figures["critical_precision"],
    }


@task(name="gates")
def gates_step(metrics: dict, critical_class: str, champion: dict | None, settings_overrides: dict) -> dict:
    return evaluate_gates(metrics, settings_for(settings_overrides).gates, critical_class, champion)


@task(name="register", retries=2, retry_delay_seconds=2)
def register_step(
    run_dir: str, run_id: str, evaluation: dict, train: dict, gates: dict, fingerprint: str, settings_overrides: dict
) -> str:
    """Log the pyfunc model into the run and register it with the SHA-256 of its weights and bundle.json as tags
    (once per run: retries reuse the version)."""
    from steelqc.tasks.runs import code_version, read_state, write_state

    settings = settings_for(settings_overrides)
    configure(settings)
    mlflow_client = client(settings)
    name = settings.registered_model
    state = read_state(Path(run_dir))
    model_uri, integrity = state.get("model_uri"), state.get("model_integrity")
    if not model_uri or not integrity:  # a model logged before weights were hashed is logged again, safely
        bundle = packaging.make_bundle(
            evaluation["architecture"],
            LabelSpace.from_dict(evaluation["label_space"]),
            evaluation["input_spec"],
            evaluation["calibration"]["threshold"],
            weights_used=train["weights_used"],
            fingerprint=fingerprint,
        )
        with mlflow.start_run(run_id=run_id):
            packaged = packaging.log_pyfunc(Path(train["best_checkpoint"]), bundle)
        model_uri, integrity = packaged.uri, packaged.tags()
        write_state(Path(run_dir), model_uri=model_uri, model_integrity=integrity)
    tags = {
        **integrity,
        "gates_passed": "true" if gates["passed"] else "false",
        "gates": json.dumps({k: v for k, v in gates.items() if isinstance(v, dict)}, default=str)[:4900],
        "gates_reason": gates["reason"],
        "fingerprint": fingerprint,
        "code_version": code_version(),
        "critical_class": evaluation["label_space"]["critical_class"],
        "threshold": str(evaluation["calibration"]["threshold"]),
        "macro_f1": str(evaluation["metrics"].get("macro_f1")),
    }
    version, _ = promotion.register_version(mlflow_client, name, model_uri, run_id, tags, settings.lock_timeout_s)
    return str(version.version)


@task(name="promote")
def promote_step(
    version: str, run_id: str, gates: dict, champion: dict | None, approval: str, settings_overrides: dict
) -> dict:
    """challenger when every gate passed; champion too under approval policy ``auto`` (re-checked in the lock)."""
    settings = settings_for(settings_overrides)
    configure(settings)
    mlflow_client = client(settings)
    name = settings.registered_model
    timeout = settings.lock_timeout_s
    if not gates["passed"]:
        promotion.record_decision(
            mlflow_client,
            name,
            timeout,
            action="not-promoted",
            alias=None,
            from_version=None,
            to_version=version,
            reason=gates["reason"],
            run_id=run_id,
        )
        return {"promoted": False, "reason": gates["reason"]}
    promotion.move_alias(
        mlflow_client,
        name,
        promotion.CHALLENGER,
        version,
        action="challenger",
        reason="all gates passed",
        run_id=run_id,
        timeout_s=timeout,
    )
    if approval != "auto":
        return {"promoted": False, "reason": f"approval policy {approval}: awaiting approval", "pending": True}
    seen = champion["version"] if champion else None
    try:
        promotion.move_alias(
            mlflow_client,
            name,
            promotion.CHAMPION,
            version,
            action="promote",
            reason="auto: all gates passed" + (f", not worse than champion v{seen}" if seen else ", first champion"),
            run_id=run_id,
            timeout_s=timeout,
            check=lambda now: (
                None
                if now == seen
                else f"champion changed from {seen} to {now} during this run; "
                "not promoted (re-run to compare with the new champion)"
            ),
        )
    except promotion.PromotionRefused as exc:
        return {"promoted": False, "reason": str(exc)}
    return {"promoted": True, "reason": "all gates passed"}


# ------------------------------------------------------------------------------------------------- flow


def _current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


def _alert_run_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (failed or crashed): raise the run-failed alert with a link to the run."""
    from steelqc.flows import alerts

    parameters = flow_run.parameters or {}
    settings = settings_for(parameters.get("settings_overrides"))
    alerts.notify(
        settings,
        "run-failed",
        f"{flow.name} run {flow_run.name} {state.type.value.lower()}",
        {"message": state.message, "deployment_id": flow_run.deployment_id, "data": parameters.get("data")},
        str(flow_run.id),
    )


@flow(name=FLOW_NAME, log_prints=False, on_failure=[_alert_run_failed], on_crashed=[_alert_run_failed])
def training_pipeline(
    data: str,
    model: str | None = None,
    epochs: int | None = None,
    fmt: str = "auto",
    critical_class: str | None = None,
    approval: str | None = None,
    resume: bool = False,
    profile: str = "default",
    train_overrides: dict | None = None,
    settings_overrides: dict | None = None,
    tune_trials: int = 0,
    tune_workers: int = 1,
) -> dict:
    """Train, evaluate, gate and register a steel-defect classifier on ``data`` (tuning first when asked)."""
    start = time.perf_counter()
    overrides = settings_overrides or {}
    settings = settings_for(overrides)
    approval = approval or settings.approval
    started_by = promotion.actor()
    flow_run_id = _current_flow_run_id()
    ingest = ingest_step(data, fmt, critical_class, overrides)
    requested = {"model": model, "epochs": epochs, **(train_overrides or {})}
    cfg = resolve_config(settings, requested, profile, tuple(ingest["image_shape"]))
    run_dir = run_folder_step(ingest, cfg.fingerprint(), resume, overrides)
    ingest = {**ingest, **{k: str(Path(run_dir) / Path(ingest[k]).name) for k in ("manifest", "quarantine")}}
    splits = split_step(run_dir, overrides)
    run_id = start_run_step(run_dir, ingest, cfg.to_dict(), overrides)
    mlflow_client = client(settings)
    mlflow_client.set_tag(run_id, "steelqc.started_by", started_by)
    if flow_run_id:
        mlflow_client.set_tag(run_id, "steelqc.flow_run_id", flow_run_id)
    tuning = None
    if tune_trials > 0:
        from steelqc.flows.tuning import tune_step
        from steelqc.tasks.model.train import TrainConfig

        trial_cfg = {**cfg.to_dict(), "epochs": settings.tune_epochs}
        tuning = tune_step(
            run_dir,
            ingest["fingerprint"],
            ingest["label_space"],
            trial_cfg,
            tune_trials,
            tune_workers,
            run_id,
            overrides,
        )
        if tuning["best_params"]:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **tuning["best_params"]})
            mlflow_client.log_param(run_id, "tuned_params", json.dumps(tuning["best_params"]))
    train = train_step(run_dir, run_id, cfg.to_dict(), ingest["label_space"], resume, overrides)
    evaluation = evaluate_step(run_dir, run_id, train["best_checkpoint"], overrides)
    champion = champion_step(run_dir, ingest["label_space"], overrides)
    gates = gates_step(evaluation["metrics"], ingest["critical_class"], champion, overrides)
    version = register_step(run_dir, run_id, evaluation, train, gates, ingest["fingerprint"], overrides)
    decision = promote_step(version, run_id, gates, champion, approval, overrides)
    current_aliases = promotion.aliases(mlflow_client, settings.registered_model)
    metrics = {k: v for k, v in evaluation["metrics"].items() if k not in ("predictions", "confusion_matrix")}
    summary = {
        "run_id": run_id,
        "model_version": version,
        "metrics": metrics,
        "gates": gates,
        "promoted": decision["promoted"],
        "decision": decision["reason"],
        "aliases": current_aliases,
        "registered_model": settings.registered_model,
        "champion_before": champion,
        "train": train,
        "splits": splits["counts"],
        "split_warnings": splits["warnings"],
        "data": {k: ingest[k] for k in ("valid", "quarantined", "by_class", "fingerprint", "manifest", "quarantine")},
        "run_dir": run_dir,
        "artifacts": evaluation["artifacts"],
        "tracking_uri": settings.mlflow_uri,
        "started_by": started_by,
        "flow_run_id": flow_run_id,
        "approval_policy": approval,
    }
    if not gates["passed"]:
        from steelqc.flows import alerts

        summary["alert"] = alerts.notify(
            settings,
            "gates-failed",
            f"{settings.registered_model} v{version} failed its gates: {gates['reason']}",
            {"run_id": run_id, "macro_f1": metrics.get("macro_f1"), "critical_recall": metrics.get("critical_recall")},
            flow_run_id,
        )
    if decision.get("pending"):
        from steelqc.flows.approval import await_approval

        outcome = await_approval(settings, summary, started_by, flow_run_id)
        summary.update(
            promoted=outcome["promoted"],
            decision=outcome["reason"],
            approval=outcome["approval"],
            aliases=promotion.aliases(mlflow_client, settings.registered_model),
        )
        if "alert" in outcome:
            summary["alert"] = outcome["alert"]
    summary["seconds"] = round(time.perf_counter() - start, 1)
    if tuning is not None:
        summary["tuning"] = tuning
    from steelqc.tasks.runs import write_state

    write_state(Path(run_dir), status="finished", model_version=version, promoted=summary["promoted"])
    Path(run_dir, "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    create_markdown_artifact(
        markdown=summary_markdown(summary, settings),
        key="training-summary",
        description=f"steelqc training run {run_id}",
    )
    return summary


def _flat_metrics(metrics: dict) -> dict[str, float]:
    """Scalar metrics for MLflow (per-class and glare figures flattened with dots)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            flat[f"test_{key}"] = float(value)
        elif key == "glare" and isinstance(value, dict):
            flat.update({f"glare_{k}": float(v) for k, v in value.items() if isinstance(v, int | float)})
        elif key == "per_class" and isinstance(value, dict):
            for cls, figures in value.items():
                for name, v in (figures or {}).items():
                    if isinstance(v, int | float) and v is not None:
                        flat[f"test_{cls}_{name}"] = float(v)
    return flat


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def summary_markdown(summary: dict, settings: Settings) -> str:
    """The Prefect markdown artifact: metrics, gates, decision and where to look."""
    m = summary["metrics"]
    lines = [
        f"# steelqc training run `{summary['run_id']}`",
        "",
        f"**Model version** {summary['registered_model']} v{summary['model_version']} · "
        f"**promoted**: {summary['promoted']} ({summary['decision']}) · **aliases**: {summary['aliases']}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "macro_f1",
        "micro_f1",
        "accuracy",
        "roc_auc_macro",
        "critical_recall",
        "critical_precision",
        "cam_in_mask",
    ):
        lines.append(f"| {key} | {_fmt(m.get(key))} |")
    for key, value in (m.get("glare") or {}).items():
        lines.append(f"| glare {key} | {_fmt(value)} |")
    lines += ["", "| gate | value | threshold | passed |", "|---|---|---|---|"]
    for name, gate in summary["gates"].items():
        if isinstance(gate, dict):
            lines.append(
                f"| {name} | {_fmt(gate.get('value'))} | {gate.get('threshold')} | "
                f"{'✅' if gate.get('passed') else '❌'} |"
            )
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    run_path = f"#/experiments/{experiment.experiment_id}/runs/{summary['run_id']}" if experiment else ""
    lines += [
        "",
        f"MLflow run: [{summary['run_id']}](http://127.0.0.1:5000/{run_path}) "
        f"(tracking store `{summary['tracking_uri']}`; open it with `steelqc server start` or "
        f"`mlflow ui --backend-store-uri {summary['tracking_uri']}`)",
        "",
        "Plots (MLflow artifacts under `evaluation/`): "
        + ", ".join(f"`{Path(p).name}`" for k, p in summary["artifacts"].items() if p.endswith(".png")),
        f"\nRun folder: `{summary['run_dir']}`",
    ]
    return "\n".join(lines)
