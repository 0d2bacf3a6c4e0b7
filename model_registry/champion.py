"""The current champion re-scored on a training run's test split, for the champion gate.

The champion is loaded by the version its alias names (safely: :func:`model_registry.packaging.load`) and scored
with its own critical threshold on the same images as the challenger. A champion whose label space differs from
the run's is not comparable: no figures, a reason, and the gate leaves the decision to approval.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from steelqc.model_registry import packaging, promotion
from steelqc.model_registry.gates import ChampionScore
from steelqc.model_registry.policy import CHAMPION
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.evaluation.assess import true_indices
from steelqc.tasks.evaluation.metrics import compute_metrics


class ScoringModel(Protocol):
    """What re-scoring needs of a loaded model (:class:`model_registry.packaging.SteelDefectModel`)."""

    label_space: LabelSpace
    threshold: float | None

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray: ...


def rescore(model: ScoringModel, version: str, test_df: pd.DataFrame, label_space: LabelSpace) -> ChampionScore:
    """``model`` (champion ``version``) scored on ``test_df``, whose labels follow ``label_space``."""
    if model.label_space != label_space:
        return ChampionScore(
            str(version),
            comparable=False,
            reason=f"champion v{version} has label space {model.label_space.to_dict()}, this run "
            f"{label_space.to_dict()}: not comparable; needs approval",
        )
    figures = compute_metrics(
        true_indices(test_df, label_space),
        model.predict_proba(test_df),
        label_space.names,
        label_space.critical_index,
        model.threshold,
    )
    return ChampionScore(
        str(version),
        comparable=True,
        macro_f1=figures["macro_f1"],
        critical_recall=figures["critical_recall"],
        critical_precision=figures["critical_precision"],
    )


def score_champion(
    client: MlflowClient, name: str, test_df: pd.DataFrame, label_space: LabelSpace
) -> ChampionScore | None:
    """The champion of registered model ``name`` re-scored on ``test_df`` (None when there is no champion)."""
    version = promotion.alias_version(client, name, CHAMPION)
    if version is None:
        return None
    return rescore(packaging.load(f"models:/{name}/{version}"), version, test_df, label_space)
