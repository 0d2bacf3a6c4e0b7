"""What the ML lead reads before deciding (flows/approval.py): the request's markdown, its JSON and the alert's
details carry every headline figure with its 95 % interval (glare ΔF1 included) and the test images per class."""

from __future__ import annotations

import dataclasses
import json

from steelqc.flows.approval import REQUEST_ARTIFACT, ApprovalRequest, _log_request, alert_details, request_markdown
from steelqc.model_registry.gates import ChampionScore, evaluate_gates
from steelqc.tasks.config import Gates

SUPPORT = {"ok": 40, "crazing": 45, "inclusion": 38, "patches": 7, "scratches": 12}
METRICS = {
    "macro_f1": 0.912,
    "critical_recall": 0.962,
    "critical_precision": 0.81,
    "glare": {"f1_clean": 0.912, "f1_dim": 0.9, "f1_bright": 0.905, "delta_f1": 0.012},
    "per_class": {name: {"f1": 0.9, "support": n} for name, n in SUPPORT.items()},
    "confidence_intervals": {
        "macro_f1": [0.861, 0.955],
        "critical_recall": [0.88, 1.0],
        "glare_delta_f1": [0.0031, 0.0274],
    },
}
CHAMPION = ChampionScore("1", True, macro_f1=0.9, critical_recall=0.95, critical_precision=0.7)


def request(metrics: dict = METRICS, champion: ChampionScore | None = CHAMPION) -> ApprovalRequest:
    report = evaluate_gates(metrics, Gates(min_test_support_per_class=5), "crazing", champion)
    return ApprovalRequest("steel", "3", "run-1", report, metrics, champion, "night-shift", "flow-1")


def row(markdown: str, first_cell: str) -> list[str]:
    """The cells of the comparison table's row (after the gate table) whose first cell is ``first_cell``."""
    comparison = markdown.split("| on this run's test split |", 1)[1]
    for line in comparison.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no row {first_cell!r} in:\n{markdown}")


def test_markdown_shows_each_interval_next_to_its_figure_and_the_champion() -> None:
    text = request_markdown(request(), 3600)
    assert "challenger 95% CI" in text
    assert row(text, "macro_f1") == ["0.9120", "0.8610–0.9550", "0.9000"]
    assert row(text, "critical_recall") == ["0.9620", "0.8800–1.0000", "0.9500"]
    assert row(text, "critical_precision") == ["0.8100", "—", "0.7000"]
    assert row(text, "glare_delta_f1") == ["0.0120", "0.0031–0.0274", "—"]


def test_markdown_shows_the_test_images_per_class() -> None:
    text = request_markdown(request(), 3600)
    assert "**Test images per class**: ok 40, crazing 45, inclusion 38, patches 7, scratches 12 (142 in all)" in text


def test_json_form_has_figures_with_intervals_and_the_test_sizes() -> None:
    out = json.loads(json.dumps(request().to_dict()))  # JSON-serialisable as it is
    assert out["test_images_per_class"] == SUPPORT
    assert list(out["test_images_per_class"]) == list(SUPPORT), "in the class order"
    assert out["figures"]["glare_delta_f1"] == {"value": 0.012, "ci95": [0.0031, 0.0274], "champion": None}
    assert out["figures"]["macro_f1"] == {"value": 0.912, "ci95": [0.861, 0.955], "champion": 0.9}
    assert out["figures"]["critical_recall"]["ci95"] == [0.88, 1.0]
    assert out["gates"]["glare_delta_f1"]["ci95"] == [0.0031, 0.0274]
    assert out["verdict"]["passed"] is True and out["champion_version"] == "1"
    assert (out["name"], out["version"], out["run_id"], out["flow_run_id"]) == ("steel", "3", "run-1", "flow-1")


def test_alert_details_carry_the_intervals_and_sizes() -> None:
    details = alert_details(request())
    assert details["ci95"] == "macro_f1 0.8610–0.9550, critical_recall 0.8800–1.0000, glare_delta_f1 0.0031–0.0274"
    assert details["test_images_per_class"] == "ok 40, crazing 45, inclusion 38, patches 7, scratches 12 (142 in all)"
    assert details["glare_delta_f1"] == 0.012 and details["run_id"] == "run-1"


def test_a_request_without_the_glare_interval_or_a_champion_still_reads() -> None:
    metrics = {**METRICS, "confidence_intervals": {"macro_f1": [0.861, 0.955], "critical_recall": [0.88, 1.0]}}
    text = request_markdown(request(metrics, champion=None), 3600)
    assert row(text, "glare_delta_f1") == ["0.0120", "—", "—"]
    assert "No champion yet" in text
    out = request(metrics, champion=None).to_dict()
    assert out["figures"]["glare_delta_f1"]["ci95"] is None and out["champion_version"] is None


class RecordingClient:
    """The one call _log_request makes: log_dict(run_id, dictionary, artifact_file); ``fail`` makes it raise."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.logged = fail, []

    def log_dict(self, run_id: str, dictionary: dict, artifact_file: str) -> None:
        if self.fail:
            raise OSError("artifact store unreachable")
        self.logged.append((run_id, dictionary, artifact_file))


def test_the_json_is_kept_with_the_mlflow_run_and_a_failure_does_not_stop_approval(caplog) -> None:
    recording = RecordingClient()
    _log_request(recording, request())
    assert recording.logged == [("run-1", request().to_dict(), REQUEST_ARTIFACT)]
    _log_request(RecordingClient(fail=True), request())  # no exception
    assert "artifact store unreachable" in caplog.text


def test_the_request_links_the_model_card_when_there_is_one() -> None:
    card = "runs:/run-1/card/model_card.md"
    with_card = dataclasses.replace(request(), model_card=card)
    assert f"Model card: `{card}`." in request_markdown(with_card, 3600)
    assert with_card.to_dict()["model_card"] == card
    assert "Model card" not in request_markdown(request(), 3600) and request().to_dict()["model_card"] is None
