"""The model card of a registered version: ``card/model_card.md`` in the version's MLflow run, linked by the
version tag ``model_card``.

:func:`render_card` builds the Markdown from plain dicts (what the model is for and not for, its data, its figures
with their intervals, glare, the critical class and threshold, the gates, the limits the figures show, the approval
record and the exported formats). :func:`write_card` renders and logs it, keeping the facts it was built from
(``card/card.json``) so that :func:`refresh_card` can re-render it when the approval outcome arrives or after
``steelqc export``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from steelqc.model_registry import promotion

log = logging.getLogger(__name__)

CARD_DIR = "card"
CARD_FILE = "model_card.md"
FACTS_FILE = "card.json"
CARD_TAG = "model_card"
THIN_SUPPORT = 10  # fewer test images of a class than this: its figures can move a lot (when no gate says)
WIDE_INTERVAL = 0.2  # a 95 % interval wider than this is a limit
GLARE_DROP = 0.05  # a macro-F1 drop under glare larger than this is a limit
DATA_KEYS = ("valid", "quarantined", "by_class", "fingerprint", "format", "sources", "image_shape", "channels")

INTENDED_USE = (
    "Classifying 256×1600 grey steel-strip surface images, taken at the line by the inspection camera, into OK or "
    "one of the defect classes below, to route strips for inspection. Safety first: an image is flagged as the "
    "critical class whenever its probability reaches the calibrated threshold, even when another class scores "
    "higher, so that critical defects are rarely missed at the cost of some false alarms."
)
NOT_FOR = (
    "other materials than the steel strip it was trained on (aluminium, coated or painted surfaces, ...);",
    "other cameras, lighting or image resolutions without re-validation on images from them;",
    "the only safety control: it complements the line's inspection procedures, it does not replace them;",
    "steel unlike any of its training sources (grades, finishes or plants it has not seen): "
    "check the drift monitor and re-validate first.",
)


# ------------------------------------------------------------------------------------------------ format


def _num(value: Any) -> str:
    """A figure to 4 decimals; a dict (the champion gate's threshold) as ``key value, ...``; ``—`` for None."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_num(v)}" for k, v in value.items())
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _ci(ci: Any) -> str:
    """``[lo, hi]`` as ``0.8610–0.9550``; ``—`` when there is none."""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        return f"{ci[0]:.4f}–{ci[1]:.4f}"
    return "—"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _counts(by_class: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{name} {n}" for name, n in (by_class or {}).items()) or "—"


# ---------------------------------------------------------------------------------------------- sections


def data_sources(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``data["sources"]`` (the ingest's sources by name) when present; otherwise the whole data set as one source."""
    if data.get("sources"):
        return dict(data["sources"])
    keys = ("path", "format", "valid", "quarantined", "by_class")
    return {"data": {k: data.get(k) for k in keys}}


def _data_section(data: Mapping[str, Any]) -> list[str]:
    rows = [
        (name, s.get("format") or "—", _num(s.get("valid")), _num(s.get("quarantined")), _counts(s.get("by_class")))
        for name, s in data_sources(data).items()
    ]
    return [
        "## Data",
        "",
        f"Ingest fingerprint `{data.get('fingerprint') or '—'}`: {_num(data.get('valid'))} valid images, "
        f"{_num(data.get('quarantined'))} quarantined. By class: {_counts(data.get('by_class'))}.",
        "",
        *_table(("source", "format", "valid images", "quarantined", "images per class"), rows),
    ]


def _class_section(metrics: Mapping[str, Any]) -> list[str]:
    per_class = metrics.get("per_class") or {}
    rows = [
        (name, _num(f.get("precision")), _num(f.get("recall")), _num(f.get("f1")), _num(f.get("support")))
        for name, f in ((n, f or {}) for n, f in per_class.items())
    ]
    cis = metrics.get("confidence_intervals") or {}
    return [
        "## Figures on the test split",
        "",
        f"Macro-F1 {_num(metrics.get('macro_f1'))} (95 % CI {_ci(cis.get('macro_f1'))}), accuracy "
        f"{_num(metrics.get('accuracy'))}, ROC AUC (macro) {_num(metrics.get('roc_auc_macro'))}.",
        "",
        *_table(("class", "precision", "recall", "F1", "test images"), rows),
    ]


def _source_section(metrics: Mapping[str, Any]) -> list[str]:
    sources = metrics.get("per_source") or {}
    if not sources:
        return ["", "Per-source figures: none (the data has a single source; the figures above are its figures)."]
    rows = []
    for name, f in sources.items():
        ci = f.get("confidence_intervals") or {}
        rows.append((
            name, _num(f.get("n")), _num(f.get("macro_f1")), _ci(ci.get("macro_f1")),
            _num(f.get("critical_recall")), _ci(ci.get("critical_recall")), _counts(f.get("support")),
        ))  # fmt: skip
    header = ("source", "test images", "macro-F1", "95% CI", "critical recall", "95% CI", "test images per class")
    return ["", "### By data source", "", *_table(header, rows)]


def _glare_section(metrics: Mapping[str, Any]) -> list[str]:
    glare = metrics.get("glare") or {}
    ci = (metrics.get("confidence_intervals") or {}).get("glare_delta_f1")
    return [
        "## Glare",
        "",
        f"Macro-F1 clean {_num(glare.get('f1_clean'))}, dimmed {_num(glare.get('f1_dim'))}, brightened "
        f"{_num(glare.get('f1_bright'))}. ΔF1 (largest drop from clean) {_num(glare.get('delta_f1'))} "
        f"(95 % CI {_ci(ci)}); |dim − bright| {_num(glare.get('delta_f1_dim_bright'))}.",
    ]


def _critical_section(model: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    cis = metrics.get("confidence_intervals") or {}
    calibration = metrics.get("calibration") or {}
    target = calibration.get("target_recall")
    return [
        "## Critical class",
        "",
        f"Critical class **{model.get('critical_class') or '—'}**, calibrated threshold "
        f"**{_num(model.get('threshold'))}** (on the validation split"
        + (f", for a recall of at least {_num(target)}" if target is not None else "")
        + f"). On the test split at that threshold: recall {_num(metrics.get('critical_recall'))} "
        f"(95 % CI {_ci(cis.get('critical_recall'))}), precision {_num(metrics.get('critical_precision'))}.",
    ]


def _gate_section(gates: Mapping[str, Mapping[str, Any]], verdict: Mapping[str, Any]) -> list[str]:
    rows = [
        (name, _num(g.get("value")), _num(g.get("threshold")), "passed" if g.get("passed") else "**FAILED**")
        for name, g in gates.items()
    ]
    outcome = "passed" if verdict.get("passed") else ("refused" if verdict.get("refused") else "**failed**")
    return [
        "## Gates",
        "",
        *_table(("gate", "value", "threshold", "verdict"), rows),
        "",
        f"Verdict: {outcome} — {verdict.get('reason') or '—'}",
    ]


def _width(ci: Any) -> float | None:
    ok = isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci)
    return float(ci[1] - ci[0]) if ok else None


def known_limits(
    metrics: Mapping[str, Any], gates: Mapping[str, Mapping[str, Any]], data: Mapping[str, Any]
) -> list[str]:
    """What the figures say the model cannot promise: thin classes, sources not judged, wide intervals, a glare
    drop, a single training source."""
    floor = (gates.get("min_support") or {}).get("threshold")
    floor = floor if isinstance(floor, int | float) and not isinstance(floor, bool) else THIN_SUPPORT
    limits = [
        f"class **{name}** has only {int((f or {}).get('support') or 0)} test images (fewer than {floor}): "
        "its figures are uncertain"
        for name, f in (metrics.get("per_class") or {}).items()
        if int((f or {}).get("support") or 0) < floor
    ]
    for name, why in ((gates.get("source_macro_f1") or {}).get("not_judged") or {}).items():
        limits.append(f"source **{name}** was not judged: {why}")
    cis = metrics.get("confidence_intervals") or {}
    for key, ci in cis.items():
        width = _width(ci)
        if width is not None and width > WIDE_INTERVAL:
            limits.append(f"the 95 % interval of {key} is wide ({_ci(ci)}): the test split is small for it")
    delta = (metrics.get("glare") or {}).get("delta_f1")
    if isinstance(delta, int | float) and delta > GLARE_DROP:
        limits.append(f"macro-F1 drops by {_num(delta)} under glare (dimmed or brightened images)")
    if len(data_sources(data)) < 2:
        limits.append("trained and tested on a single data source: no evidence on other plants or steel types")
    return limits


def _limits_section(limits: Sequence[str]) -> list[str]:
    return ["## Known limits", "", *([f"- {line}" for line in limits] or ["- none shown by the figures"])]


def _approval_section(audit: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [
        (
            e.get("time") or "—", e.get("action") or "—", e.get("alias") or "—",
            f"{e.get('from_version') or '—'} → {e.get('to_version') or '—'}", e.get("actor") or "—",
            str(e.get("reason") or "—").replace("|", "/"),
        )
        for e in audit
    ]  # fmt: skip
    if not rows:
        return ["## Approval record", "", "No registry decision on this version yet."]
    return ["## Approval record", "", *_table(("when", "action", "alias", "versions", "who", "reason"), rows)]


def _export_section(exports: Mapping[str, Any] | None) -> list[str]:
    if not exports:
        return ["## Exported formats", "", "Not exported yet (`steelqc export --model URI`)."]
    latency, parity = exports.get("latency") or {}, exports.get("parity") or {}
    rows = [
        (fmt, _num((latency.get(fmt) or {}).get("p50_ms")), _num((latency.get(fmt) or {}).get("p95_ms")),
         _num((parity.get(fmt) or {}).get("max_abs_diff")))
        for fmt in latency
    ]  # fmt: skip
    int8 = exports.get("int8") or {}
    return [
        "## Exported formats",
        "",
        *_table(("format", "latency p50 (ms)", "latency p95 (ms)", "parity max |Δp|"), rows),
        "",
        f"Recommended: **{exports.get('recommended') or '—'}**; INT8: {int8.get('reason') or '—'}"
        + (f"; logged at `{exports['logged']}`" if exports.get("logged") else ""),
    ]


def render_card(
    model: Mapping[str, Any],
    data: Mapping[str, Any],
    metrics: Mapping[str, Any],
    gates: Mapping[str, Mapping[str, Any]],
    verdict: Mapping[str, Any],
    audit: Sequence[Mapping[str, Any]] = (),
    exports: Mapping[str, Any] | None = None,
) -> str:
    """The model card in Markdown. ``model``: ``name``, ``version``, ``run_id``, ``architecture``,
    ``critical_class``, ``threshold``, ``code_version``; ``data``: the ingest summary (``sources`` when several);
    ``metrics``: the evaluation's figures; ``gates`` and ``verdict`` as in ``steelqc train --json``; ``audit``: the
    registry's audit events about this version; ``exports``: the ``steelqc export`` summary (None before)."""
    lines = [
        f"# Model card: {model.get('name')} v{model.get('version')}",
        "",
        f"Architecture `{model.get('architecture') or '—'}` · MLflow run `{model.get('run_id') or '—'}` · code "
        f"`{model.get('code_version') or '—'}`",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Not for",
        "",
        *[f"- {line}" for line in NOT_FOR],
        "",
    ]
    sections = (
        _data_section(data),
        _class_section(metrics) + _source_section(metrics),
        _glare_section(metrics),
        _critical_section(model, metrics),
        _gate_section(gates, verdict),
        _limits_section(known_limits(metrics, gates, data)),
        _approval_section(audit),
        _export_section(exports),
    )
    for section in sections:
        lines += [*section, ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ MLflow


def version_events(events: Sequence[Mapping[str, Any]], version: str) -> list[dict]:
    """The audit events about ``version`` (it was the alias's target, or the version the alias left)."""
    return [dict(e) for e in events if str(version) in (str(e.get("to_version")), str(e.get("from_version")))]


def card_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{CARD_DIR}/{CARD_FILE}"


def write_card(client: MlflowClient, name: str, version: str, facts: Mapping[str, Any]) -> str:
    """Render the card of ``name`` v``version`` from ``facts`` (``model``, ``data``, ``metrics``, ``gates``,
    ``verdict``, optional ``exports``) and the registry's audit trail; log it and the facts into the version's run
    (``card/``) and tag the version with the card's URI. Returns that URI."""
    run_id = client.get_model_version(name, version).run_id
    facts = {**facts, "model": {**facts.get("model", {}), "name": name, "version": str(version), "run_id": run_id}}
    audit = version_events(promotion.history(client, name), version)
    text = render_card(
        facts["model"], facts.get("data") or {}, facts.get("metrics") or {}, facts.get("gates") or {},
        facts.get("verdict") or {}, audit, facts.get("exports"),
    )  # fmt: skip
    client.log_text(run_id, json.dumps(facts, indent=2, default=str), f"{CARD_DIR}/{FACTS_FILE}")
    client.log_text(run_id, text, f"{CARD_DIR}/{CARD_FILE}")
    uri = card_uri(run_id)
    client.set_model_version_tag(name, version, CARD_TAG, uri)
    log.info("model card of %s v%s: %s", name, version, uri)
    return uri


def stored_facts(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The facts a card of this run was last written from (``card/card.json``), or None when it has none."""
    try:
        path = client.download_artifacts(run_id, f"{CARD_DIR}/{FACTS_FILE}")
    except (MlflowException, OSError):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_card(client: MlflowClient, name: str, version: str) -> str | None:
    """The Markdown of a version's model card (``card/model_card.md`` of its run), None when it has none."""
    run_id = client.get_model_version(name, version).run_id
    try:
        path = client.download_artifacts(run_id, f"{CARD_DIR}/{CARD_FILE}")
    except (MlflowException, OSError):
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def refresh_card(client: MlflowClient, name: str, version: str, **updates: Any) -> str | None:
    """Re-render the card of a version from its stored facts with ``updates`` (e.g. ``exports=``) and the audit
    trail as it is now; None (nothing written) when the version has no card yet."""
    facts = stored_facts(client, client.get_model_version(name, version).run_id)
    if facts is None:
        log.warning("%s v%s has no model card to refresh", name, version)
        return None
    return write_card(client, name, version, {**facts, **updates})
