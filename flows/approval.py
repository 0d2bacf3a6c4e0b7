"""Promotion approved by an ML lead: the paused flow run, its input form, and `steelqc registry approve`.

With approval policy ``manual`` a run whose gates passed registers the version as ``challenger`` and then pauses
with a typed input form (:class:`ApprovalInput`): the ML lead approves or rejects in the Prefect UI (the flow run's
"Resume" button) or with ``steelqc registry approve <flow-run-id> --reviewer NAME [--reject]``. The flow applies
the decision through ``model_registry.approval`` (audited, locked). A self-approval is refused and recorded, and
the run pauses again for another reviewer until the approval timeout; on timeout the champion stays as it was.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from mlflow import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from steelqc.flows import alerts
from steelqc.flows.steps import settings_for
from steelqc.model_registry import approval, packaging, promotion
from steelqc.model_registry.gates import ChampionScore, GateReport
from steelqc.model_registry.store import client, configure
from steelqc.monitoring.review_labels import LabelDesk, LabelError
from steelqc.monitoring.shadow import reviewed_frame, score_labels, shadow_comparison
from steelqc.tasks import redact
from steelqc.tasks.config import Settings

log = logging.getLogger("flows.approval")

REQUEST_ARTIFACT = "approval/request.json"  # the request's JSON (ApprovalRequest.to_dict), logged to the MLflow run


class ApprovalInput(RunInput):
    """The form an ML lead fills in to resume a paused training run."""

    decision: Literal["approve", "reject"] = Field(
        default="approve", description="approve: the challenger becomes champion; reject: champion unchanged"
    )
    reviewer: str = Field(description="Your name; it must not be whoever started this run")
    comment: str = Field(default="", description="Why (kept in the registry's audit trail)")


@dataclass
class ApprovalRequest:
    """A registered version whose gates passed, and what the reviewer decides on."""

    name: str
    version: str
    run_id: str
    report: GateReport
    metrics: dict[str, Any]
    champion: ChampionScore | None
    started_by: str
    flow_run_id: str | None
    model_card: str | None = None  # runs:/<run>/card/model_card.md: what the version is good for
    shadow: dict[str, Any] | None = None  # both models on the images reviewed at the line (shadow_step)

    def to_dict(self) -> dict[str, Any]:
        """The request as JSON: who and what, the gates and verdict, each headline figure with its 95 % interval
        and the champion's, and the test images per class (how far the figures can move)."""
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "flow_run_id": self.flow_run_id,
            "started_by": self.started_by,
            "model_card": self.model_card,
            **self.report.to_dict(),
            "figures": request_figures(self.metrics, self.champion),
            "test_images_per_class": images_per_class(self.metrics),
            "per_source": self.metrics.get("per_source") or {},
            "champion_version": self.champion.version if self.champion is not None else None,
            "shadow": self.shadow,
        }


@dataclass
class ApprovalOutcome:
    """The decision applied: ``promoted``, why, ``approval`` (decision, reviewer, comment, or ``{"decision":
    "timeout"}``; ``refused`` when the registry refused it) and the awaiting-approval alert that went out."""

    promoted: bool
    reason: str
    approval: dict[str, Any]
    alert: dict[str, Any] | None = None


# figure of the request -> key of its 95 % interval in metrics["confidence_intervals"] (None: no interval)
FIGURES = {
    "macro_f1": "macro_f1",
    "critical_recall": "critical_recall",
    "critical_precision": None,
    "glare_delta_f1": "glare_delta_f1",
}


def _fmt(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return f"{value:.4f}" if isinstance(value, float) else ("—" if value is None else str(value))


def _ci(ci: object) -> str:
    """``[lo, hi]`` as ``0.8610–0.9550``; ``—`` when there is none (not computed, or undefined)."""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        return f"{ci[0]:.4f}–{ci[1]:.4f}"
    return "—"


def images_per_class(metrics: dict[str, Any]) -> dict[str, int]:
    """Test images per class name (the ``support`` of ``metrics["per_class"]``), in the class order."""
    return {
        name: int((figures or {}).get("support") or 0) for name, figures in (metrics.get("per_class") or {}).items()
    }


def request_figures(metrics: dict[str, Any], champion: ChampionScore | None) -> dict[str, dict[str, Any]]:
    """Each headline figure: the challenger's ``value``, its bootstrap ``ci95`` (None when there is none) and the
    ``champion``'s value on the same test split (None without a comparable champion; it has no glare figure)."""
    values = {**metrics, "glare_delta_f1": (metrics.get("glare") or {}).get("delta_f1")}
    cis = metrics.get("confidence_intervals") or {}
    return {
        key: {
            "value": values.get(key),
            "ci95": cis.get(ci_key) if ci_key else None,
            "champion": getattr(champion, key, None),
        }
        for key, ci_key in FIGURES.items()
    }


def sizes_line(sizes: dict[str, int]) -> str:
    """``crazing 45, inclusion 45 (90 in all)``; ``—`` when unknown."""
    if not sizes:
        return "—"
    return ", ".join(f"{name} {n}" for name, n in sizes.items()) + f" ({sum(sizes.values())} in all)"


def source_rows(metrics: dict[str, Any]) -> list[str]:
    """A markdown table of each data source's figures (macro-F1 and critical recall with their 95 % intervals, test
    images per class); no rows with fewer than two sources."""
    sources = metrics.get("per_source") or {}
    if len(sources) < 2:
        return []
    rows = [
        "",
        "| source | test images | macro-F1 | 95% CI | critical recall | 95% CI | test images per class |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in sources.items():
        ci, sizes = f.get("confidence_intervals") or {}, sizes_line(f.get("support") or {})
        rows.append(
            f"| {name} | {f.get('n')} | {_fmt(f.get('macro_f1'))} | {_ci(ci.get('macro_f1'))} | "
            f"{_fmt(f.get('critical_recall'))} | {_ci(ci.get('critical_recall'))} | {sizes} |"
        )
    return rows


@task(name="shadow-comparison")
def shadow_step(name: str, version: str, champion_version: str | None, settings_overrides: dict) -> dict | None:
    """The challenger (and the champion) on the images people reviewed at the line; None when none is reviewed."""
    return shadow_on_reviewed(settings_for(settings_overrides), name, version, champion_version)


def shadow_on_reviewed(
    settings: Settings, name: str, version: str, champion_version: str | None
) -> dict[str, Any] | None:
    """:func:`~steelqc.monitoring.shadow.shadow_comparison` of ``models:/name/version`` and the champion on the
    newest ``shadow_max_images`` reviewed images; None without any; ``{"error": ...}`` when they cannot be scored
    (the request goes out without it: the comparison informs the decision, it does not gate it)."""
    try:
        records = list(LabelDesk.open(settings).done().values())
    except LabelError as exc:
        log.info("no shadow comparison: %s", exc)
        return None
    frame = reviewed_frame(records, settings.shadow_max_images)
    if frame.empty:
        log.info("no shadow comparison: no reviewed image in %s", settings.reviewed_dir)
        return None
    configure(settings)  # packaging.load resolves models:/ URIs on MLflow's configured store
    try:
        challenger = score_labels(packaging.load(f"models:/{name}/{version}"), frame)
        champion = (
            score_labels(packaging.load(f"models:/{name}/{champion_version}"), frame) if champion_version else None
        )
    except (OSError, ValueError) as exc:
        log.warning("shadow comparison on %d reviewed images failed: %s", len(frame), exc)
        return {"n_images": len(frame), "error": str(exc)}
    names = [n for _, n in sorted(settings.class_names.items())]
    return shadow_comparison(
        frame, challenger, champion, names, settings.critical_class,
        challenger_version=version, champion_version=champion_version,
    )  # fmt: skip


def _pr(side: dict[str, Any] | None, cls: str) -> tuple[str, str]:
    """``(precision, recall)`` of class ``cls`` on one side of a shadow comparison, formatted."""
    row = next((r for r in (side or {}).get("classes", []) if r["class"] == cls), None)
    return ("—", "—") if row is None else (_fmt(row["precision"]), _fmt(row["recall"]))


def shadow_rows(shadow: dict[str, Any] | None, listed: int = 5) -> list[str]:
    """The shadow comparison as markdown: per class precision and recall of both models on the reviewed images,
    accuracy, missed criticals, and the first ``listed`` images they decide differently; none without one."""
    if not shadow:
        return []
    head = f"### On {shadow['n_images']} images reviewed at the line (shadow comparison)"
    if shadow.get("error"):
        return ["", head, "", f"Could not be scored: {shadow['error']}"]
    new, old = shadow["challenger"], shadow.get("champion")
    old_name = f"champion v{old['version']}" if old else "champion (none)"
    rows = [
        "", head, "",
        f"| class | reviewed | {old_name} precision | recall | challenger v{new['version']} precision | recall |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in new["classes"]:
        if row["support"] or row["predicted"]:
            cls = row["class"]
            rows.append(f"| {cls} | {row['support']} | {' | '.join(_pr(old, cls))} | {' | '.join(_pr(new, cls))} |")
    old_acc, old_missed = (_fmt(old["accuracy"]), old["missed_critical"]) if old else ("—", "—")
    rows.append(f"| accuracy | | {old_acc} | | {_fmt(new['accuracy'])} | |")
    rows.append(f"| {shadow['critical']} missed | | {old_missed} | | {new['missed_critical']} | |")
    if old:
        rows += ["", f"They decide differently on **{shadow['n_disagree']}** of these images."]
        rows += [
            f"- `{d['sha256'][:12]}` reviewed as {d['reviewed_as']}: champion {d['champion']}, "
            f"challenger {d['challenger']}"
            for d in shadow["disagreements"][:listed]
        ]
    return rows


def request_markdown(request: ApprovalRequest, timeout_s: int) -> str:
    """What the reviewer sees: gate table, the comparison with the champion (with the challenger's 95 % intervals),
    the test images per class, how to decide."""
    rows = [
        f"# Approval needed: {request.name} v{request.version} → champion",
        "",
        f"Started by **{request.started_by}** (who may not approve it). Waiting up to {timeout_s / 3600:.1f} h; "
        "without a decision the champion stays as it is."
        + (f" Model card: `{request.model_card}`." if request.model_card else ""),
        "",
        "| gate | value | threshold | passed |",
        "|---|---|---|---|",
    ]
    for name, gate in request.report.gates.items():
        rows.append(f"| {name} | {_fmt(gate.value)} | {_fmt(gate.threshold)} | {'yes' if gate.passed else 'NO'} |")
    rows += [
        "",
        "| on this run's test split | challenger | challenger 95% CI | champion |",
        "|---|---|---|---|",
    ]
    for key, figure in request_figures(request.metrics, request.champion).items():
        rows.append(f"| {key} | {_fmt(figure['value'])} | {_ci(figure['ci95'])} | {_fmt(figure['champion'])} |")
    if request.champion is not None:
        rows.append(f"| version | v{request.version} | | v{request.champion.version} |")
    else:
        rows.append("\nNo champion yet: this would be the first.")
    rows += source_rows(request.metrics)
    rows += shadow_rows(request.shadow)
    rows += [
        "",
        f"**Test images per class**: {sizes_line(images_per_class(request.metrics))}. The intervals are "
        "bootstrap 95 % intervals over these images (glare ΔF1 paired: clean, dim and bright on the same "
        "resampled images): a figure can move that much on another test split of this size.",
        "",
        "**Decide** with the flow run's *Resume* button (form: decision, reviewer, comment), or:",
        "",
        f"`steelqc registry approve {request.flow_run_id} --reviewer YOUR_NAME [--reject] [--comment TEXT]`",
    ]
    return "\n".join(rows)


def await_approval(settings: Settings, request: ApprovalRequest) -> ApprovalOutcome:
    """Publish the request, raise the awaiting-approval alert, pause for the ML lead's decision and apply it; a
    reviewer who may not decide is refused and the run pauses again, until the approval timeout."""
    mlflow_client = client(settings)
    markdown = redact.redact(request_markdown(request, settings.approval_timeout_s))
    create_markdown_artifact(
        markdown=markdown, key="approval-request", description=f"{request.name} v{request.version}"
    )
    alert = alerts.notify(
        settings,
        "awaiting-approval",
        f"{request.name} v{request.version} passed its gates and awaits an ML lead's approval",
        alert_details(request),
        request.flow_run_id,
    )
    _log_request(mlflow_client, request)
    deadline = time.monotonic() + settings.approval_timeout_s
    for attempt in itertools.count(1):
        answer = _pause(settings, markdown, attempt, int(deadline - time.monotonic()))
        if answer is None:
            event = approval.timed_out(
                mlflow_client, request.name, request.version, waited_s=settings.approval_timeout_s,
                started_by=request.started_by, **_common(settings, request),
            )  # fmt: skip
            return ApprovalOutcome(False, event["reason"], {"decision": "timeout"}, alert)
        outcome = _apply(mlflow_client, settings, request, answer)
        if outcome is not None:
            return replace(outcome, alert=alert)
    raise AssertionError("unreachable")


def alert_details(request: ApprovalRequest) -> dict[str, Any]:
    """The awaiting-approval alert's details: the headline figures with their 95 % intervals and the test images
    per class, as one readable line each."""
    figures = request_figures(request.metrics, request.champion)
    intervals = ", ".join(f"{key} {_ci(figures[key]['ci95'])}" for key, ci_key in FIGURES.items() if ci_key)
    return {
        "run_id": request.run_id,
        "macro_f1": request.metrics.get("macro_f1"),
        "glare_delta_f1": figures["glare_delta_f1"]["value"],
        "ci95": intervals,
        "test_images_per_class": sizes_line(images_per_class(request.metrics)),
        "started_by": request.started_by,
    }


def _log_request(mlflow_client: MlflowClient, request: ApprovalRequest) -> None:
    """Keep the request's JSON with the MLflow run (``approval/request.json``); never fails the run."""
    try:
        mlflow_client.log_dict(request.run_id, request.to_dict(), REQUEST_ARTIFACT)
    except Exception as exc:  # the request is also the markdown artifact; losing this copy must not stop approval
        log.warning("could not log %s to run %s: %s", REQUEST_ARTIFACT, request.run_id, exc)


def _pause(settings: Settings, markdown: str, attempt: int, remaining_s: int) -> ApprovalInput | None:
    """The reviewer's answer, or None once the approval time has run out."""
    if remaining_s <= 0:
        return None
    try:
        return pause_flow_run(
            wait_for_input=ApprovalInput.with_initial_data(description=markdown),
            timeout=remaining_s,
            poll_interval=settings.approval_poll_s,
            key=f"approval-{attempt}",
        )
    except FlowPauseTimeout:
        return None


def _common(settings: Settings, request: ApprovalRequest) -> dict[str, Any]:
    return {"run_id": request.run_id, "flow_run_id": request.flow_run_id, "timeout_s": settings.lock_timeout_s}


def _apply(
    mlflow_client: MlflowClient, settings: Settings, request: ApprovalRequest, answer: ApprovalInput
) -> ApprovalOutcome | None:
    """Apply the answer through the registry; None when this reviewer may not decide (another one can)."""
    decided = {"decision": answer.decision, "reviewer": answer.reviewer, "comment": answer.comment}
    who = {"reviewer": answer.reviewer, "started_by": request.started_by, "comment": answer.comment}
    try:
        if answer.decision == "approve":
            seen = request.champion.version if request.champion is not None else None
            event = approval.approve(
                mlflow_client, request.name, request.version, seen_champion=seen, **who, **_common(settings, request)
            )
        else:
            event = approval.reject(mlflow_client, request.name, request.version, **who, **_common(settings, request))
    except approval.ReviewerRefused as exc:
        log.warning("%s; waiting for another reviewer", exc)
        return None
    except promotion.PromotionRefused as exc:
        return ApprovalOutcome(False, str(exc), {**decided, "refused": str(exc)})
    return ApprovalOutcome(answer.decision == "approve", event["reason"], decided)
