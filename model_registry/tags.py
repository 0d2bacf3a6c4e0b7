"""The tags a training run's model version is registered with (what `steelqc registry`, rollback and the MLflow UI
read): its gates and verdict, the data fingerprint, the code version, its critical class and threshold, and the
SHA-256 of its files (``weights_sha256``, ``bundle_sha256``, from :mod:`model_registry.packaging`)."""

from __future__ import annotations

import json

from steelqc.model_registry.gates import GateReport
from steelqc.model_registry.policy import GATES_PASSED_TAG
from steelqc.tasks.evaluation.assess import Evaluation

MAX_TAG_CHARS = 4900  # MLflow's limit on a tag value is 5000 characters


def version_tags(
    report: GateReport, evaluation: Evaluation, fingerprint: str, code_version: str, integrity: dict[str, str]
) -> dict[str, str]:
    """Every tag of a new version, as strings: ``integrity`` (the files' hashes), ``gates_passed``, ``gates`` (the
    gate table as JSON, cut to MLflow's limit), ``gates_reason`` (the verdict's reason), ``fingerprint``,
    ``code_version``, ``critical_class``, ``threshold`` and ``macro_f1``."""
    return {
        **integrity,
        GATES_PASSED_TAG: "true" if report.passed else "false",
        "gates": json.dumps(report.gates_dict(), default=str)[:MAX_TAG_CHARS],
        "gates_reason": report.reason,
        "fingerprint": fingerprint,
        "code_version": code_version,
        "critical_class": evaluation.label_space.critical_class,
        "threshold": str(evaluation.threshold),
        "macro_f1": str(evaluation.metrics.get("macro_f1")),
    }
