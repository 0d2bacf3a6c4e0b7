"""The ``training-pipeline`` Prefect flow: ingest → split → train → evaluate → gates → register/promote.

Thin wiring: the work lives in ``tasks/`` and ``model_registry/``; Prefect tasks pass paths, MLflow run ids and
typed results, add retries on I/O steps and publish a markdown artifact with the metrics, the gates and links.
The flow returns a :class:`TrainingResult`; its ``to_dict()`` is the JSON of ``steelqc train``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from steelqc.flows import alerts
from steelqc.flows.approval import ApprovalOutcome, ApprovalRequest, await_approval, shadow_step, source_rows
from steelqc.flows.steps import ingest_step, queue_review_candidates_step, run_folder_step, settings_for, split_step
from steelqc.flows.tuning import tune_step
from steelqc.model_registry import card, packaging, promotion
from steelqc.model_registry.champion import score_champion
from steelqc.model_registry.gates import ChampionScore, GateReport, evaluate_gates
from steelqc.model_registry.policy import PromotionOutcome, decide_promotion
from steelqc.model_registry.reference import log_reference, reference_for_run, stored_reference
from steelqc.model_registry.store import client, configure
from steelqc.model_registry.tags import version_tags
from steelqc.tasks import redact
from steelqc.tasks.config import Settings, mask_url
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.data.split import load_split
from steelqc.tasks.evaluation.assess import Evaluation, evaluate_run
from steelqc.tasks.model.distill import DistillationError
from steelqc.tasks.model.distributed import fit
from steelqc.tasks.model.train import TrainConfig, TrainResult, resolve_config
from steelqc.tasks.runs import code_version, read_state, write_state

log = logging.getLogger("flows.training")

FLOW_NAME = "training-pipeline"
DATA_KEYS = ("valid", "quarantined", "by_class", "fingerprint", "manifest", "quarantine")
REVIEW_KEYS = ("relabelled_by_review", "confirmed_by_review")  # when the reviewed source changed a label
NOT_IN_SUMMARY = ("predictions", "confusion_matrix")  # per-image and per-cell figures stay in metrics.json


def _mlflow(settings_overrides: dict) -> tuple[Settings, MlflowClient]:
    """The run's settings, MLflow pointed at their store, and a client."""
    settings = settings_for(settings_overrides)
    configure(settings)
    return settings, client(settings)


# ------------------------------------------------------------------------------------------------ tasks


@task(name="start-mlflow-run", retries=2, retry_delay_seconds=2)
def start_run_step(
    run_dir: str,
    ingest: dict,
    cfg: dict,
    settings_overrides: dict,
    started_by: str | None = None,
    flow_run_id: str | None = None,
    reason: str | None = None,
) -> str:
    """Create (or reuse, on resume) the MLflow run of this pipeline run; tag who started it, the flow run and why
    (``reason``: e.g. the drift monitor's)."""
    _settings, mlflow_client = _mlflow(settings_overrides)
    run_id = read_state(Path(run_dir)).get("mlflow_run_id") or _new_mlflow_run(Path(run_dir), ingest, cfg)
    tags = {"steelqc.started_by": started_by, "steelqc.flow_run_id": flow_run_id, "steelqc.retrain_reason": reason}
    for key, value in tags.items():
        if value:
            mlflow_client.set_tag(run_id, key, value)
    return run_id


def _new_mlflow_run(run_dir: Path, ingest: dict, cfg: dict) -> str:
    """A new MLflow run with the training settings and data as params and the manifest and quarantine files."""
    tags = {
        "steelqc.fingerprint": ingest["fingerprint"],
        "steelqc.code_version": code_version(),
        "steelqc.data": read_state(run_dir).get("data", ""),
        "steelqc.run_dir": str(run_dir),
    }
    with mlflow.start_run(run_name=run_dir.name, tags=tags) as run:
        mlflow.log_params({f"train.{k}": v for k, v in cfg.items()})
        data_params = ("valid", "quarantined", "format", "critical_class", "channels")
        mlflow.log_params({f"data.{k}": ingest[k] for k in data_params})
        for name in ("manifest", "quarantine"):
            mlflow.log_artifact(ingest[name], artifact_path="data")
        run_id = run.info.run_id
    write_state(run_dir, mlflow_run_id=run_id)
    return run_id


@task(name="teacher")
def teacher_step(model_uri: str | None, tune_trials: int, settings_overrides: dict) -> dict:
    """``--distill-from``: the teacher pinned to the version it names now (README "Distillation"); {} without one."""
    if not model_uri:
        return {}
    if tune_trials > 0:
        raise DistillationError("--distill-from cannot be combined with tuning: tune the student alone first")
    _settings, mlflow_client = _mlflow(settings_overrides)
    return {"distill_from": packaging.pinned_uri(model_uri, mlflow_client)}


@task(name="train")
def train_step(
    run_dir: str, run_id: str, cfg: dict, label_space: dict, resume: bool, settings_overrides: dict
) -> TrainResult:
    """Train on the run's train split, pick the best epoch on validation; every epoch's figures to MLflow (from
    this process, also when ``processes`` > 1 runs the training in torchrun processes)."""
    _settings, mlflow_client = _mlflow(settings_overrides)

    def on_epoch(epoch: int, figures: dict) -> None:
        stamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), stamp, epoch)
            for key, value in figures.items()
            if isinstance(value, int | float) and key != "epoch"
        ]
        mlflow_client.log_batch(run_id, metrics=metrics)  # one store call per epoch

    write_state(Path(run_dir), status="training")
    train, val = load_split(run_dir, "train"), load_split(run_dir, "val")
    space, config = LabelSpace.from_dict(label_space), TrainConfig.from_dict(cfg)
    teacher = packaging.load_teacher(config.distill_from) if config.distill_from else None
    result = fit(train, val, space, config, Path(run_dir), on_epoch=on_epoch, resume=resume, teacher=teacher)
    mlflow_client.log_param(run_id, "weights_used", result.weights_used)
    mlflow_client.log_param(run_id, "device", result.device)
    for key in ("world_size", "backend", "command") if result.distributed else ():
        mlflow_client.log_param(run_id, f"ddp.{key}", result.distributed[key])
    mlflow_client.set_tag(run_id, "steelqc.best_epoch", str(result.best_epoch))
    write_state(Path(run_dir), status="trained", best_checkpoint=str(result.best_checkpoint))
    return result


@task(name="evaluate")
def evaluate_step(run_dir: str, run_id: str, checkpoint: str, settings_overrides: dict) -> Evaluation:
    """Calibrate the critical threshold on validation, assess on test (clean, dim, bright, Grad-CAM); log it all."""
    settings, mlflow_client = _mlflow(settings_overrides)
    evaluation = evaluate_run(
        Path(checkpoint), Path(run_dir), settings.critical_recall_target, settings.seed, settings.bootstrap_samples
    )
    for key, value in _flat_metrics(evaluation.metrics).items():
        mlflow_client.log_metric(run_id, key, value)
    for path in evaluation.artifacts.values():
        mlflow_client.log_artifact(run_id, path, artifact_path="evaluation")
    return evaluation


@task(name="drift-reference", retries=1, retry_delay_seconds=2)
def reference_step(
    run_dir: str, run_id: str, checkpoint: str, threshold: float | None, settings_overrides: dict
) -> str:
    """Features of the training and validation images, the embedding projection and the calibrated novelty score:
    the reference the drift monitor compares new images with, logged with the run (once; a resumed run reuses it)."""
    settings, mlflow_client = _mlflow(settings_overrides)
    if stored_reference(mlflow_client, run_id) is None:
        reference = reference_for_run(Path(run_dir), Path(checkpoint), threshold, settings)
        log_reference(mlflow_client, run_id, reference)
    return f"runs:/{run_id}/reference"


@task(name="compare-with-champion")
def champion_step(run_dir: str, label_space: dict, settings_overrides: dict) -> ChampionScore | None:
    """The current champion re-scored on this run's test split (None when there is no champion)."""
    settings, mlflow_client = _mlflow(settings_overrides)
    test = load_split(run_dir, "test")
    return score_champion(mlflow_client, settings.registered_model, test, LabelSpace.from_dict(label_space))


@task(name="gates")
def gates_step(
    metrics: dict, critical_class: str, champion: ChampionScore | None, settings_overrides: dict
) -> GateReport:
    return evaluate_gates(metrics, settings_for(settings_overrides).gates, critical_class, champion)


@task(name="register", retries=2, retry_delay_seconds=2)
def register_step(
    run_dir: str,
    run_id: str,
    evaluation: Evaluation,
    train: TrainResult,
    report: GateReport,
    fingerprint: str,
    settings_overrides: dict,
) -> str:
    """Register the run's model with its gates, fingerprint and files' hashes as tags (once per run: retries and a
    resumed run reuse the version)."""
    settings, mlflow_client = _mlflow(settings_overrides)
    model_uri, integrity = _logged_model(Path(run_dir), run_id, evaluation, train, fingerprint)
    tags = version_tags(report, evaluation, fingerprint, code_version(), integrity)
    name, timeout = settings.registered_model, settings.lock_timeout_s
    version, _ = promotion.register_version(mlflow_client, name, model_uri, run_id, tags, timeout)
    return str(version.version)


def _logged_model(
    run_dir: Path, run_id: str, evaluation: Evaluation, train: TrainResult, fingerprint: str
) -> tuple[str, dict[str, str]]:
    """The pyfunc model logged into the run and the SHA-256 of its files (logged once; a model logged before
    weights were hashed is logged again, safely)."""
    state = read_state(run_dir)
    if state.get("model_uri") and state.get("model_integrity"):
        return state["model_uri"], state["model_integrity"]
    bundle = packaging.make_bundle(
        evaluation.architecture,
        evaluation.label_space,
        evaluation.input_spec,
        evaluation.threshold,
        weights_used=train.weights_used,
        fingerprint=fingerprint,
    )
    with mlflow.start_run(run_id=run_id):
        packaged = packaging.log_pyfunc(Path(train.best_checkpoint), bundle)
    write_state(run_dir, model_uri=packaged.uri, model_integrity=packaged.tags())
    return packaged.uri, packaged.tags()


@task(name="promote")
def promote_step(
    version: str,
    run_id: str,
    report: GateReport,
    champion: ChampionScore | None,
    approval: str,
    settings_overrides: dict,
) -> PromotionOutcome:
    """The promotion policy on this version: challenger when every gate passed, champion too under approval policy
    ``auto`` (refused when the champion moved since the comparison)."""
    settings, mlflow_client = _mlflow(settings_overrides)
    seen = champion.version if champion is not None else None
    decision = decide_promotion(report.verdict, approval, seen)
    return promotion.promote(
        mlflow_client, settings.registered_model, version, decision, run_id=run_id, champion_before=seen,
        timeout_s=settings.lock_timeout_s,
    )  # fmt: skip


@task(name="model-card", retries=2, retry_delay_seconds=2)
def card_step(version: str, facts: dict, settings_overrides: dict) -> str:
    """Write the version's model card (``card/model_card.md`` in its run, with the audit trail as it is now; again
    once the approval outcome is in). Returns the card's URI."""
    settings, mlflow_client = _mlflow(settings_overrides)
    return card.write_card(mlflow_client, settings.registered_model, version, facts)


# ------------------------------------------------------------------------------------------- the result


@dataclass
class TrainingResult:
    """What one `training-pipeline` run did; ``to_dict()`` is the JSON of ``steelqc train`` (``summary.json``)."""

    run_id: str
    model_version: str
    run_dir: str
    ingest: dict[str, Any]
    splits: dict[str, Any]
    train: TrainResult
    evaluation: Evaluation
    report: GateReport
    champion_before: ChampionScore | None
    outcome: PromotionOutcome
    registered_model: str
    tracking_uri: str
    started_by: str
    flow_run_id: str | None
    approval_policy: str
    tuning: dict[str, Any] | None = None
    approval: ApprovalOutcome | None = None
    alert: dict[str, Any] | None = None
    aliases: dict[str, str] | None = None
    seconds: float | None = None
    model_card: str | None = None

    @property
    def promoted(self) -> bool:
        return self.approval.promoted if self.approval is not None else self.outcome.promoted

    @property
    def decision(self) -> str:
        return self.approval.reason if self.approval is not None else self.outcome.reason

    @property
    def metrics(self) -> dict[str, Any]:
        return {k: v for k, v in self.evaluation.metrics.items() if k not in NOT_IN_SUMMARY}

    def approval_request(self) -> ApprovalRequest:
        return ApprovalRequest(
            self.registered_model, self.model_version, self.run_id, self.report, self.metrics,
            self.champion_before, self.started_by, self.flow_run_id, self.model_card,
        )  # fmt: skip

    def card_facts(self) -> dict[str, Any]:
        """What the model card is rendered from (:func:`steelqc.model_registry.card.render_card`)."""
        return {
            "model": {
                "architecture": self.evaluation.architecture,
                "critical_class": self.evaluation.label_space.critical_class,
                "threshold": self.evaluation.threshold,
                "code_version": code_version(),
            },
            "data": {k: self.ingest[k] for k in card.DATA_KEYS if k in self.ingest},
            "metrics": self.metrics,
            "gates": self.report.gates_dict(),
            "verdict": self.report.verdict.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        """``gates`` holds the gates only; the verdict over them is ``verdict``."""
        out = {
            "run_id": self.run_id,
            "model_version": self.model_version,
            "metrics": self.metrics,
            "gates": self.report.gates_dict(),
            "verdict": self.report.verdict.to_dict(),
            "promoted": self.promoted,
            "decision": self.decision,
            "aliases": self.aliases,
            "registered_model": self.registered_model,
            "champion_before": self.champion_before.to_dict() if self.champion_before is not None else None,
            "train": self.train.summary(),
            "splits": self.splits["counts"],
            "split_warnings": self.splits["warnings"],
            "data": {k: self.ingest[k] for k in DATA_KEYS}
            | {k: self.ingest[k] for k in REVIEW_KEYS if self.ingest.get(k)},
            "run_dir": self.run_dir,
            "artifacts": self.evaluation.artifacts,
            "tracking_uri": self.tracking_uri,
            "started_by": self.started_by,
            "flow_run_id": self.flow_run_id,
            "approval_policy": self.approval_policy,
            "seconds": self.seconds,
        }
        optional = {"alert": self.alert, "tuning": self.tuning, "model_card": self.model_card}
        if self.approval is not None:
            optional["approval"] = self.approval.approval
        return out | {k: v for k, v in optional.items() if v is not None}


# ------------------------------------------------------------------------------------------------- flow


def _current_flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


def _alert_run_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (failed or crashed): raise the run-failed alert with a link to the run."""
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
    data: str | list[str],
    model: str | None = None,
    epochs: int | None = None,
    fmt: str = "auto",
    critical_class: str | None = None,
    approval: Literal["auto", "manual"] | None = None,
    resume: bool = False,
    profile: str = "default",
    train_overrides: dict | None = None,
    settings_overrides: dict | None = None,
    tune_trials: int = 0,
    tune_workers: int = 1,
    reason: str | None = None,
) -> TrainingResult:
    """Train, evaluate, gate and register a steel-defect classifier on ``data`` (a folder, or data sources ``NAME=DIR``
    joined by class name; tuning first when asked)."""
    start, overrides = time.perf_counter(), settings_overrides or {}
    settings = settings_for(overrides)
    policy, started_by, flow_run_id = approval or settings.approval, promotion.actor(), _current_flow_run_id()
    ingest = ingest_step(data, fmt, critical_class, overrides)
    # the data decides grey (1) or colour (3) decoding (ingest's `channels`, README "Data"); it joins the input spec
    requested = {"model": model, "epochs": epochs, "image_channels": ingest["channels"], **(train_overrides or {})}
    requested.update(teacher_step(requested.get("distill_from"), tune_trials, overrides))
    cfg = resolve_config(settings, requested, profile, tuple(ingest["image_shape"]))
    run_dir = run_folder_step(ingest, cfg.fingerprint(), resume, overrides)
    ingest = _in_run_folder(ingest, run_dir)
    splits = split_step(run_dir, overrides)
    run_id = start_run_step(run_dir, ingest, cfg.to_dict(), overrides, started_by, flow_run_id, reason)
    cfg, tuning = _tuned_config(cfg, run_dir, run_id, ingest, tune_trials, tune_workers, overrides)
    train = train_step(run_dir, run_id, cfg.to_dict(), ingest["label_space"], resume, overrides)
    evaluation = evaluate_step(run_dir, run_id, str(train.best_checkpoint), overrides)
    reference_step(run_dir, run_id, str(train.best_checkpoint), evaluation.threshold, overrides)
    champion = champion_step(run_dir, ingest["label_space"], overrides)
    report = gates_step(evaluation.metrics, ingest["critical_class"], champion, overrides)
    version = register_step(run_dir, run_id, evaluation, train, report, ingest["fingerprint"], overrides)
    queue_review_candidates_step(run_dir, run_id, version, overrides, return_state=True)  # logged; never fails the run
    outcome = promote_step(version, run_id, report, champion, policy, overrides)
    result = TrainingResult(
        run_id, version, run_dir, ingest, splits, train, evaluation, report, champion, outcome,
        settings.registered_model, mask_url(settings.mlflow_uri), started_by, flow_run_id, policy, tuning,
    )  # fmt: skip
    _follow_up_with_card(settings, result, overrides)
    return _finish(settings, result, time.perf_counter() - start)


def _in_run_folder(ingest: dict, run_dir: str) -> dict:
    """The ingest summary with its manifest and quarantine in ``run_dir`` (a resumed run's folder)."""
    return {**ingest, **{k: str(Path(run_dir) / Path(ingest[k]).name) for k in ("manifest", "quarantine")}}


def _tuned_config(
    cfg: TrainConfig, run_dir: str, run_id: str, ingest: dict, trials: int, workers: int, overrides: dict
) -> tuple[TrainConfig, dict | None]:
    """With ``trials``: tune first (trials of ``tune_epochs`` epochs, nested under this run), then train with the
    best parameters. Returns the training config and the tuning summary (None without tuning)."""
    if trials <= 0:
        return cfg, None
    settings = settings_for(overrides)
    trial_cfg = {**cfg.to_dict(), "epochs": settings.tune_epochs}
    tuning = tune_step(
        run_dir, ingest["fingerprint"], ingest["label_space"], trial_cfg, trials, workers, run_id, overrides
    )
    if tuning["best_params"]:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **tuning["best_params"]})
        client(settings).log_param(run_id, "tuned_params", json.dumps(tuning["best_params"]))
    return cfg, tuning


def _follow_up_with_card(settings: Settings, result: TrainingResult, overrides: dict) -> None:
    """The version's model card, then :func:`_follow_up`; the card again once an approval outcome is in (its
    approval record)."""
    result.model_card = card_step(result.model_version, result.card_facts(), overrides)
    _follow_up(settings, result, overrides)
    if result.approval is not None:
        card_step(result.model_version, result.card_facts(), overrides)


def _follow_up(settings: Settings, result: TrainingResult, overrides: dict) -> None:
    """Raise the gates-failed alert; or, when the version awaits approval, compare challenger and champion on the
    reviewed images (shadow) and pause for an ML lead's decision."""
    if not result.report.passed:
        metrics = result.metrics
        result.alert = alerts.notify(
            settings,
            "gates-failed",
            f"{result.registered_model} v{result.model_version} failed its gates: {result.report.reason}",
            {
                "run_id": result.run_id,
                "macro_f1": metrics.get("macro_f1"),
                "critical_recall": metrics.get("critical_recall"),
            },
            result.flow_run_id,
        )
    elif result.outcome.pending:
        request = result.approval_request()
        champion = result.champion_before.version if result.champion_before is not None else None
        request.shadow = shadow_step(request.name, request.version, champion, overrides)
        result.approval = await_approval(settings, request)
        result.alert = result.approval.alert


def _finish(settings: Settings, result: TrainingResult, seconds: float) -> TrainingResult:
    """The aliases as they are now; the run folder's ``summary.json`` and ``state.json`` (finished); the
    ``training-summary`` markdown artifact."""
    result.aliases = promotion.aliases(client(settings), settings.registered_model)
    result.seconds = round(seconds, 1)
    run_dir = Path(result.run_dir)
    write_state(run_dir, status="finished", model_version=result.model_version, promoted=result.promoted)
    (run_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    create_markdown_artifact(
        markdown=redact.redact(summary_markdown(result, settings)),
        key="training-summary",
        description=f"steelqc training run {result.run_id}",
    )
    return result


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
        elif key == "per_source" and isinstance(value, dict):
            for source, figures in value.items():
                flat.update({f"source_{source}_{k}": float(v) for k, v in figures.items() if _is_number(v)})
        elif key == "per_class" and isinstance(value, dict):
            for cls, figures in value.items():
                for name, v in (figures or {}).items():
                    if isinstance(v, int | float) and v is not None:
                        flat[f"test_{cls}_{name}"] = float(v)
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


METRIC_ROWS = (
    "macro_f1",
    "micro_f1",
    "accuracy",
    "roc_auc_macro",
    "critical_recall",
    "critical_precision",
    "cam_in_mask",
)


def summary_markdown(result: TrainingResult, settings: Settings) -> str:
    """The Prefect markdown artifact: metrics, gates and their verdict, the decision and where to look."""
    m = result.metrics
    lines = [
        f"# steelqc training run `{result.run_id}`",
        "",
        f"**Model version** {result.registered_model} v{result.model_version} · "
        f"**promoted**: {result.promoted} ({result.decision}) · **aliases**: {result.aliases}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {_fmt(m.get(key))} |" for key in METRIC_ROWS]
    lines += [f"| glare {key} | {_fmt(value)} |" for key, value in (m.get("glare") or {}).items()]
    lines += ["", "| gate | value | threshold | passed |", "|---|---|---|---|"]
    for name, gate in result.report.gates.items():
        lines.append(f"| {name} | {_fmt(gate.value)} | {gate.threshold} | {'✅' if gate.passed else '❌'} |")
    lines += source_rows(m)
    lines += ["", f"**Verdict**: {result.report.reason}"]
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    run_path = f"#/experiments/{experiment.experiment_id}/runs/{result.run_id}" if experiment else ""
    plots = [f"`{Path(p).name}`" for p in result.evaluation.artifacts.values() if p.endswith(".png")]
    lines += [
        "",
        f"MLflow run: [{result.run_id}](http://127.0.0.1:5000/{run_path}) "
        f"(tracking store `{result.tracking_uri}`; open it with `steelqc server start` or "
        f"`mlflow ui --backend-store-uri {result.tracking_uri}`)",
        "",
        "Plots (MLflow artifacts under `evaluation/`): " + ", ".join(plots),
        f"\nModel card: `{result.model_card}` (MLflow run artifact `card/model_card.md`)" if result.model_card else "",
        f"\nRun folder: `{result.run_dir}`",
    ]
    return "\n".join(lines)
