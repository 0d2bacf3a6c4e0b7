"""What the CLI prints without ``--json``: short, readable summaries built from the same dicts ``--json`` prints.

Pure functions from a command's summary dict to rich renderables (no I/O, no settings): the training report
(``train``, ``demo``), the evaluation and tuning reports, one line per image for ``predict``, and a compact
listing for every other command. The gate verdict is read from ``summary["verdict"]`` and, for summaries written
before it existed, from ``summary["gates"]`` (``passed``, ``refused``, ``reason``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

PASS, FAIL = "✓", "✗"
LIMIT = 110  # characters of one value in a listing
BELOW_GATE = ": below 0, so no trial reached the critical-precision gate (the objective is then value − 1)"

# gate or metric name -> (label, metrics key holding its value, key of its 95 % interval)
FIGURES = {
    "macro_f1": ("macro-F1", "macro_f1", "macro_f1"),
    "critical_recall": ("critical recall", "critical_recall", "critical_recall"),
    "critical_precision": ("critical precision", "critical_precision", None),
    "glare_delta_f1": ("glare ΔF1 (largest drop)", None, "glare_delta_f1"),
    "min_support": ("test images per class", None, None),
    "source_macro_f1": ("lowest source macro-F1", None, None),
    "champion": ("vs champion", None, None),
}
DEMO_NOTE = (
    "What the demo's model is: a model of generated images (steelqc synth). It shows the pipeline (gates, registry, "
    "approval), not a model for real steel: the demo's champion scored macro-F1 0.08 on the 47 real Severstal images "
    "in ../shared/data/severstal-sample when measured here, below chance. To train on real data: steelqc train --data "
    "DIR, with DIR in the Severstal layout (train.csv + train_images/) or one folder per class (DIR/ok/*.jpg, "
    "DIR/crack/*.jpg, ...)."
)


# ----------------------------------------------------------------------------------------------- numbers


def number(value: Any, digits: int = 3) -> str:
    """A figure for people: 3 decimals for floats, — for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def interval(ci: Any) -> str:
    """``[lo, hi]`` as ``0.850–0.960`` ('' when there is none)."""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        return f"{ci[0]:.3f}–{ci[1]:.3f}"
    return ""


def mark(passed: Any) -> Text:
    if passed is None:
        return Text("")
    return Text(PASS, style="green") if passed else Text(FAIL, style="bold red")


def compact(value: Any, limit: int = LIMIT) -> str:
    """One line for any JSON value: ``ok 5, crack 9`` for a flat dict, ``a, b`` for a list, cut at ``limit``."""
    if isinstance(value, Mapping):
        text = ", ".join(f"{k} {compact(v, limit)}" for k, v in value.items()) or "—"
    elif isinstance(value, list | tuple):
        text = ", ".join(compact(v, limit) for v in value) or "—"
    elif isinstance(value, float):
        text = f"{value:.4g}"  # 0.0001, 3.2e-05, 0.9123: learning rates and scores alike
    else:
        text = number(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------- verdict


def verdict(summary: Mapping) -> dict:
    """``{passed, refused, reason}``: the top-level ``verdict``, else the one kept inside ``gates``."""
    found = summary.get("verdict")
    if isinstance(found, Mapping):
        return {"passed": found.get("passed"), "refused": found.get("refused"), "reason": found.get("reason")}
    gates = summary.get("gates") or {}
    return {"passed": gates.get("passed"), "refused": gates.get("refused"), "reason": gates.get("reason")}


def gate_entries(summary: Mapping) -> dict[str, dict]:
    """Each gate's ``{value, threshold, passed, ...}`` (the verdict keys and other non-dict entries skipped)."""
    return {name: gate for name, gate in (summary.get("gates") or {}).items() if isinstance(gate, Mapping)}


def _threshold(gate: Mapping) -> str:
    threshold, rule = gate.get("threshold"), gate.get("rule")
    if isinstance(threshold, Mapping):
        tolerance = threshold.get("macro_f1_tolerance")
        return f"≥ champion's (F1 −{tolerance})" if tolerance is not None else compact(threshold)
    if rule is None and isinstance(threshold, int | float) and isinstance(gate.get("value"), int | float):
        rule = ">="  # min_support: a count of test images, at least the threshold
    if rule:
        return f"{'≥' if rule == '>=' else '≤' if rule == '<=' else rule} {number(threshold, 2)}"
    return number(threshold, 2)


def _gate_value(name: str, gate: Mapping) -> str:
    if name == "champion":
        version = gate.get("champion_version")
        if version is None or gate.get("comparable") is False:
            return gate.get("reason") or "no champion yet"
        ours = gate.get("value") or {}
        return (
            f"v{version}: F1 {number(ours.get('macro_f1'))} vs {number(gate.get('champion_macro_f1'))}, "
            f"recall {number(ours.get('critical_recall'))} vs {number(gate.get('champion_critical_recall'))}"
        )
    if name == "min_support" and gate.get("below"):
        return f"{number(gate.get('value'))} (below: {compact(gate['below'])})"
    value = gate.get("value")
    return compact(value) if isinstance(value, Mapping) else number(value)


def figures_table(metrics: Mapping, gates: Mapping[str, Mapping] | None = None) -> Table:
    """The headline figures: value, 95 % interval, and with ``gates`` each gate's threshold and ✓/✗."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("figure")
    table.add_column("value", overflow="fold")
    table.add_column("95% CI")
    if gates is not None:
        table.add_column("gate", overflow="fold")
        table.add_column("", justify="center")
    cis = metrics.get("confidence_intervals") or {}
    glare = metrics.get("glare") or {}
    names = list(FIGURES) if gates is None else [*FIGURES, *(n for n in gates if n not in FIGURES)]
    for name in names:
        label, key, ci_key = FIGURES.get(name, (name.replace("_", " "), None, None))
        if name == "critical_recall" and metrics.get("critical_class"):
            label = f"{label} ({metrics['critical_class']})"
        gate = (gates or {}).get(name)
        if gate is not None:
            value = _gate_value(name, gate)
        elif key is not None and key in metrics:
            value = number(metrics[key])
        elif name == "glare_delta_f1" and "delta_f1" in glare:
            value = number(glare["delta_f1"])
        else:
            continue
        ci = interval(cis.get(ci_key) or (gate or {}).get("ci95")) if ci_key else ""
        row = [label, value, ci]
        if gates is not None:
            row += [_threshold(gate) if gate else "", mark(gate.get("passed") if gate else None)]
        table.add_row(*row)
    return table


def sources_table(per_source: Mapping[str, Mapping]) -> Table:
    """Each data source's figures: test images, macro-F1 and critical recall with their 95 % intervals, the test
    images per class (how far the figures can move)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in ("source", "images", "macro-F1", "95% CI", "critical recall", "95% CI", "per class"):
        table.add_column(column, overflow="fold")
    for name, f in per_source.items():
        cis = f.get("confidence_intervals") or {}
        table.add_row(
            name, number(f.get("n")), number(f.get("macro_f1")), interval(cis.get("macro_f1")),
            number(f.get("critical_recall")), interval(cis.get("critical_recall")), compact(f.get("support") or {}),
        )  # fmt: skip
    return table


def details(rows: Iterable[tuple[str, Any]]) -> Table:
    """A two-column key/value grid (rows with a None value left out)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        if value is not None:
            grid.add_row(key, value if isinstance(value, Text) else str(value))
    return grid


# ----------------------------------------------------------------------------------------------- reports


def ui_links(summary: Mapping, mlflow_ui: str | None, prefect_ui: str | None) -> dict[str, str]:
    """Where to see the run: the MLflow run and model version, the Prefect flow run (when it was kept)."""
    links = {}
    if mlflow_ui:
        base = mlflow_ui.rstrip("/")
        if summary.get("run_id"):
            links["MLflow run"] = f"{base}/#/runs/{summary['run_id']}"
        if summary.get("model_version") and summary.get("registered_model"):
            links["MLflow model"] = f"{base}/#/models/{summary['registered_model']}/versions/{summary['model_version']}"
        if not links:
            links["MLflow"] = base
    if prefect_ui and summary.get("flow_run_id"):
        links["Prefect run"] = f"{prefect_ui.rstrip('/')}/runs/flow-run/{summary['flow_run_id']}"
    return links


def _aliases(aliases: Mapping | None) -> str:
    return ", ".join(f"{alias} v{version}" for alias, version in (aliases or {}).items()) or "none"


def _plots(artifacts: Mapping | None, run_dir: str | None = None) -> str | None:
    """The plot files by name, after their folder (relative to the run folder when inside it)."""
    paths = [Path(p) for p in (artifacts or {}).values() if str(p).endswith(".png")]
    if not paths:
        return None
    folders = {p.parent for p in paths}
    if len(folders) > 1:
        return ", ".join(str(p) for p in paths)
    folder = folders.pop()
    if run_dir and folder.is_relative_to(run_dir):
        folder = folder.relative_to(run_dir)
    return f"{folder}/: " + ", ".join(p.name for p in paths)


def _verdict_text(found: Mapping) -> Text:
    if found.get("passed"):
        return Text(f"{PASS} {found.get('reason') or 'all gates passed'}", style="green")
    return Text(f"{FAIL} {found.get('reason') or 'not passed'}", style="bold red")


def training_report(summary: Mapping, links: Mapping[str, str] | None = None, note: str | None = None) -> Group:
    """``train`` / ``demo`` without --json: the model version, figures and gates, the decision, where to look."""
    found = verdict(summary)
    title = Text.assemble(
        ("steelqc train: ", "bold"),
        (f"{summary.get('registered_model', 'model')} v{summary.get('model_version')}", "bold cyan"),
    )
    metrics = summary.get("metrics") or {}
    promoted, why = summary.get("promoted"), summary.get("decision")
    decision = f"{'yes' if promoted else 'no'}" + (f": {why}" if why and why != found.get("reason") else "")
    tuning = summary.get("tuning")
    rows = [
        ("gates", _verdict_text(found)),
        ("promoted", decision),
        ("aliases", _aliases(summary.get("aliases"))),
        ("tuning", _tuning_line(tuning) if tuning else None),
        ("trained", _train_line(summary.get("train"))),
        ("run folder", summary.get("run_dir")),
        ("plots", _plots(summary.get("artifacts"), summary.get("run_dir"))),
        ("model card", summary.get("model_card")),
        *(links or {}).items(),
    ]
    parts: list[RenderableType] = [title, figures_table(metrics, gate_entries(summary))]
    if len(metrics.get("per_source") or {}) > 1:
        parts.append(sources_table(metrics["per_source"]))
    parts.append(details(rows))
    if note:
        parts += [Text(""), Text(note, style="yellow")]
    return Group(*parts)


def demo_report(summary: Mapping, links: Mapping[str, str] | None = None) -> Group:
    """``demo`` without --json: the training report, what its model is (and is not), and what to try next."""
    next_steps = details((key.replace("_", " "), value) for key, value in (summary.get("next") or {}).items())
    data = details([("demo data", summary.get("demo_data"))])
    report = training_report(summary, links, note=DEMO_NOTE)
    return Group(report, Text(""), data, Text("next", style="bold"), next_steps)


def _train_line(train: Mapping | None) -> str | None:
    if not train:
        return None
    epochs = train.get("epochs_run")
    return (
        f"{epochs} epoch{'' if epochs == 1 else 's'} on {train.get('device')}, best epoch {train.get('best_epoch')} "
        f"(val macro-F1 {number(train.get('best_val_macro_f1'))}), {number(train.get('seconds'), 1)} s"
        + (f", distilled from {train['teacher']}" if train.get("teacher") else "")
        + (_ddp_part(train["distributed"]) if train.get("distributed") else "")
    )


def _ddp_part(ddp: Mapping) -> str:
    """``, 2 processes (gloo, torchrun)`` for a data-parallel run."""
    return f", {ddp.get('world_size')} processes ({ddp.get('backend')}, torchrun)"


def _tuning_line(tuning: Mapping) -> str:
    return (
        f"best {number(tuning.get('best_value'))} (trial {tuning.get('best_trial')}) of "
        f"{tuning.get('finished_trials', tuning.get('n_trials'))} finished trials: {compact(tuning.get('best_params'))}"
    )


def evaluation_report(summary: Mapping, links: Mapping[str, str] | None = None) -> Group:
    """``evaluate`` without --json: the figures on the data set (no gates), per-class F1, where the plots are."""
    metrics = summary.get("metrics") or {}
    per_class = {name: (figures or {}).get("f1") for name, figures in (metrics.get("per_class") or {}).items()}
    rows = [
        ("images", f"{summary.get('n_images')} scored, {summary.get('quarantined')} quarantined"),
        ("accuracy", number(metrics.get("accuracy"))),
        ("F1 per class", compact({k: number(v) for k, v in per_class.items()}) if per_class else None),
        ("Grad-CAM in mask", number(metrics["cam_in_mask"]) if "cam_in_mask" in metrics else None),
        ("threshold", number(summary.get("threshold"))),
        ("run folder", summary.get("run_dir")),
        ("plots", _plots(summary.get("artifacts"), summary.get("run_dir"))),
        *(links or {}).items(),
    ]
    title = Text.assemble(("steelqc evaluate: ", "bold"), (str(summary.get("model")), "bold cyan"))
    return Group(title, Text(f"on {summary.get('data')}"), figures_table(metrics), details(rows))


def tuning_report(summary: Mapping, links: Mapping[str, str] | None = None) -> Group:
    """``tune`` without --json: the study, its trials and the best parameters."""
    best = summary.get("best_value")
    below_gate = isinstance(best, int | float) and best < 0
    rows = [
        ("study", summary.get("study_name")),
        ("storage", summary.get("storage")),
        (
            "trials",
            f"{summary.get('finished_trials')} finished, {summary.get('failed_trials')} failed, "
            f"{summary.get('n_trials')} in the study ({summary.get('ran_here')} run now by "
            f"{summary.get('workers')} worker(s))",
        ),
        ("best value", f"{number(best)} (trial {summary.get('best_trial')})" + (BELOW_GATE if below_gate else "")),
        ("best params", compact(summary.get("best_params"))),
        ("run folder", summary.get("run_dir")),
        *(links or {}).items(),
    ]
    return Group(Text("steelqc tune", style="bold"), details(rows))


def predictions(summary: Mapping) -> Group:
    """``predict`` without --json: one line per image (label, its probability, CRITICAL), then the totals."""
    table = Table.grid(padding=(0, 2))
    for _ in range(4):
        table.add_column(overflow="fold")
    for record in summary.get("predictions") or []:
        if record.get("error"):
            table.add_row(record["image"], Text("error", style="bold red"), "", record["error"])
            continue
        label = record.get("label")
        p = (record.get("probabilities") or {}).get(label)
        flags = Text("CRITICAL", style="bold red") if record.get("critical") else Text("")
        if record.get("novel"):
            flags.append((" " if flags.plain else "") + "NOVEL (unlike the training images: review it)", "bold yellow")
        table.add_row(record["image"], str(label), number(p), flags)
    n, speed = len(summary.get("predictions") or []), summary.get("images_per_second")
    totals = f"{n} images, {summary.get('failed', 0)} could not be predicted" + (
        f", {number(float(speed), 1)} images/s" if speed else ""
    )
    footer = (
        f"{totals}\nmodel {summary.get('model')}, critical class {summary.get('critical_class')} above "
        f"{number(summary.get('threshold'))}"
    )
    lines = [table, Text(footer, style="dim")]
    if summary.get("novel"):
        lines.append(Text(f"{summary['novel']} NOVEL: unlike the training images, review them", style="bold yellow"))
    return Group(*lines)


def listing(summary: Mapping, limit: int = LIMIT) -> Table:
    """Any other command: one line a key; a value that does not fit on its line (or holds dicts or lists) gets one
    indented line an entry, two levels deep at most."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in summary.items():
        for name, text in _rows(str(key), value, 0, limit):
            grid.add_row(name, text)
    return grid


def _rows(key: str, value: Any, depth: int, limit: int) -> list[tuple[str, str]]:
    indent = "  " * depth
    entries = (
        [(str(k), v) for k, v in value.items()]
        if isinstance(value, Mapping)
        else [("-", v) for v in value]
        if isinstance(value, list | tuple)
        else []
    )
    holds_containers = any(isinstance(v, Mapping | list | tuple) for _, v in entries)
    if not entries or depth >= 2 or (not holds_containers and len(compact(value, 10**6)) <= limit):
        return [(indent + key, compact(value, limit))]
    rows = [(indent + key, "")]
    for sub, item in entries:
        rows += _rows(sub, item, depth + 1, limit)
    return rows


# ------------------------------------------------------------------------------------------ drift monitor

DECISION_STYLE = {"start": "bold yellow", "ask-for-labels": "bold yellow", "skip-cooldown": "yellow"}


def monitor_report(summary: Mapping) -> Group:
    """``monitor`` without --json: the decision and why, the figures, the class mix, the review picks, files."""
    decision = str(summary.get("decision"))
    head = Text(f"steelqc monitor: {decision}", style=DECISION_STYLE.get(decision, "bold"))
    rows = [
        ("why", summary.get("reason")),
        ("inbox", summary.get("source")),
        ("images", _image_counts(summary)),
        ("drift", _drift_line(summary) if summary.get("drifted_share") is not None else None),
        ("retrain", summary.get("retrain_flow_run_id")),
        ("review queue", f"{summary.get('review_queued', 0)} new of {summary.get('review_picked', 0)} picked"),
        ("model", f"v{summary['model_version']}" if summary.get("model_version") else None),
        ("MLflow run", summary.get("monitoring_run_id")),
        ("report", summary.get("report")),
        ("quarantine", summary.get("quarantine_file") if summary.get("quarantined") else None),
    ]
    parts: list[RenderableType] = [head, details(rows)]
    mix = summary.get("class_mix") or {}
    if mix:
        table = Table("predicted class", "reference", "this batch", box=box.SIMPLE_HEAD)
        for name, shares in mix.items():
            table.add_row(name, number(shares.get("reference")), number(shares.get("current")))
        parts.append(table)
    return Group(*parts)


def _image_counts(summary: Mapping) -> str:
    counts = [f"{summary.get('n_images', 0)} checked", f"{summary.get('quarantined', 0)} quarantined"]
    for key, label in (("duplicates", "duplicates"), ("waiting", "waiting"), ("novel", "novel")):
        if summary.get(key):
            counts.append(f"{summary[key]} {label}")
    return ", ".join(counts)


def _drift_line(summary: Mapping) -> str:
    return (
        f"drifted share {number(summary.get('drifted_share'))}, embedding {number(summary.get('embedding_drift'))}, "
        f"confidence drop {number(summary.get('confidence_drop'))}, class mix shift "
        f"{number(summary.get('class_mix_shift'))}"
    )


def monitor_history(summary: Mapping) -> RenderableType:
    """``monitor --history`` without --json: one row a decision, newest first."""
    events = summary.get("history") or []
    if not events:
        return Text(f"no monitoring decision recorded in experiment {summary.get('experiment')}", style="dim")
    table = Table("time", "decision", "images", "quar.", "drifted", "emb.", "model", "retrain run", "reason",
                  box=box.SIMPLE_HEAD)  # fmt: skip
    for e in events:
        table.add_row(
            str(e.get("time")), str(e.get("decision") or e.get("status")), number(_int(e.get("n_images"))),
            number(_int(e.get("quarantined"))), number(e.get("drifted_share")), number(e.get("embedding_drift")),
            str(e.get("model_version") or "—"), str(e.get("retrain_flow_run_id") or "—"),
            compact(e.get("reason"), 80),
        )  # fmt: skip
    return table


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None
