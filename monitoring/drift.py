"""The drift check: a batch of new images against its champion's reference, with Evidently 0.7, and the decision.

Per-feature drift (Evidently ``ValueDrift``, plotted in the HTML report) over the photometric features, with the
rule's stattest and threshold (default: the normed Wasserstein distance, an effect size in units of the
reference's spread, > 0.3); the model's confidence and margin are scored and plotted too, but do not vote (see
:data:`REPORTED_FEATURES`). The embedding drift is Evidently's embedding drift method (default ``distance``: the
euclidean distance between the mean whitened embeddings of both sides). A batch has drifted when the share of
drifted features reaches ``drifted_share`` or the embedding drift exceeds ``embedding_threshold``. The drop in
mean confidence and the shift of the predicted class mix (total variation distance) are reported next to it.
README "Drift monitoring" says why these values.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.metrics.data_drift import embedding_drift_methods
from evidently.metrics import ValueDrift

from steelqc.tasks.config import DriftRule
from steelqc.tasks.features import MODEL_VIEW, PHOTOMETRIC

log = logging.getLogger(__name__)

DRIFT_FEATURES = PHOTOMETRIC
"""The columns whose share of drifted ones decides (the embedding is judged as a whole)."""
REPORTED_FEATURES = MODEL_VIEW
"""Scored and plotted, not voted on: the reference holds the training images, on which a model is more confident
than on any new image (NEU-CLS, 5 epochs: up to 0.29 on clean held-out batches, against 0.17 for the photometric
features), so their drift partly measures the model's fit. Their change enters as ``confidence_drop`` (against
the validation images) and through the embedding."""
MIN_VALIDATION_ROWS = 50
EMBEDDING_METHODS = ("distance", "model", "mmd", "ratio")


@dataclass
class DriftResult:
    """The figures and the decision for one batch (``to_dict()`` feeds the JSON and the MLflow run)."""

    drift_detected: bool
    drifted_share: float
    drifted_features: list[str]
    feature_scores: dict[str, float]
    embedding_drift: float | None
    embedding_drifted: bool
    confidence_drop: float
    class_mix_shift: float
    class_mix: dict[str, dict[str, float]]
    reasons: list[str]
    n_reference: int
    n_current: int
    report: str | None = None
    rule: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "no drift"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"reason": self.reason}


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("emb_")]


def _embedding_method(rule: DriftRule) -> embedding_drift_methods.DriftMethod:
    if rule.embedding_method not in EMBEDDING_METHODS:
        raise ValueError(f"drift.embedding_method must be one of {EMBEDDING_METHODS}, got {rule.embedding_method!r}")
    factory = getattr(embedding_drift_methods, rule.embedding_method)
    return factory(threshold=rule.embedding_threshold, bootstrap=False)


def class_mix(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[dict[str, dict[str, float]], float]:
    """Share of each predicted class on both sides and their total variation distance (0 = same mix, 1 = none
    in common)."""
    ref = reference["predicted"].value_counts(normalize=True)
    cur = current["predicted"].value_counts(normalize=True)
    names = sorted(set(ref.index) | set(cur.index))
    mix = {n: {"reference": float(ref.get(n, 0.0)), "current": float(cur.get(n, 0.0))} for n in names}
    return mix, 0.5 * sum(abs(v["reference"] - v["current"]) for v in mix.values())


def _scores(snapshot: Any) -> dict[str, float]:
    """Per-column drift scores from an Evidently snapshot."""
    scores: dict[str, float] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            scores[config["column"]] = float(metric["value"])
    return scores


def embedding_drift(reference: pd.DataFrame, current: pd.DataFrame, rule: DriftRule) -> float | None:
    """The embedding drift score of Evidently's drift method (None without embedding columns).

    Called directly rather than through the ``EmbeddingsDrift`` metric, which also fits a t-SNE of both sides
    for its plot (35 s for 1,200 rows on 2 cores: too slow for an hourly check)."""
    emb = [c for c in embedding_columns(reference) if c in current]
    if not emb:
        return None
    score, _detected, _name = _embedding_method(rule)(current[emb], reference[emb])
    return float(score)


def _is_drifted(score: float, rule: DriftRule) -> bool:
    """A p-value test drifts below its threshold; a distance (Wasserstein, PSI, Jensen-Shannon...) above it."""
    p_value_tests = {
        "ks",
        "chisquare",
        "z",
        "t_test",
        "mannw",
        "anderson",
        "cramer_von_mises",
        "fisher_exact",
        "g_test",
    }
    if rule.stattest in p_value_tests:
        return score < rule.stattest_threshold
    return score > rule.stattest_threshold


def unseen(reference: pd.DataFrame) -> pd.DataFrame:
    """The reference rows the model did not train on (the validation split) when there are enough of them."""
    if "split" in reference:
        val = reference[reference["split"] == "val"]
        if len(val) >= MIN_VALIDATION_ROWS:
            return val
    return reference


def check_drift(
    reference: pd.DataFrame, current: pd.DataFrame, rule: DriftRule, html: Path | None = None
) -> DriftResult:
    """Compare ``current`` with ``reference`` (frames of :func:`steelqc.tasks.features.features_frame`).

    Saves Evidently's HTML report to ``html`` when given. Raises ``ValueError`` when either side is empty.
    """
    if len(reference) == 0 or len(current) == 0:
        raise ValueError(f"drift needs images on both sides, got {len(reference)} reference and {len(current)} new")
    columns = [c for c in DRIFT_FEATURES if c in reference and c in current]
    shown = columns + [c for c in REPORTED_FEATURES if c in reference and c in current]
    definition = DataDefinition(numerical_columns=shown)
    report = Report([ValueDrift(column=c, method=rule.stattest, threshold=rule.stattest_threshold) for c in shown])
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[shown].reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(reference[shown].reset_index(drop=True), data_definition=definition),
    )
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html))
    scores, embedding = _scores(snapshot), embedding_drift(reference, current, rule)
    drifted = [c for c in columns if _is_drifted(scores[c], rule)]
    share = len(drifted) / len(columns) if columns else 0.0
    embedding_drifted = embedding is not None and embedding > rule.embedding_threshold
    mix, shift = class_mix(reference, current)
    reasons = []
    if columns and share >= rule.drifted_share:
        listed = ", ".join(f"{c} {scores[c]:.2f}" for c in drifted)
        reasons.append(
            f"{len(drifted)} of {len(columns)} features drifted ({listed}; {rule.stattest} > "
            f"{rule.stattest_threshold}), share {share:.2f} >= {rule.drifted_share}"
        )
    if embedding_drifted:
        reasons.append(f"embedding drift {embedding:.3f} > {rule.embedding_threshold} ({rule.embedding_method})")
    return DriftResult(
        drift_detected=bool(reasons),
        drifted_share=round(share, 4),
        drifted_features=drifted,
        feature_scores={c: round(v, 4) for c, v in scores.items()},
        embedding_drift=None if embedding is None else round(embedding, 4),
        embedding_drifted=embedding_drifted,
        confidence_drop=round(float(unseen(reference)["confidence"].mean() - current["confidence"].mean()), 4),
        class_mix_shift=round(shift, 4),
        class_mix=mix,
        reasons=reasons,
        n_reference=len(reference),
        n_current=len(current),
        report=str(html) if html is not None else None,
        rule=rule.model_dump(),
    )
