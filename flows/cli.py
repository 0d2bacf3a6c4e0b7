"""The ``steelqc`` command line. Every command takes ``--json`` and then prints one JSON object on stdout;
without it, a short readable summary (``flows/summary.py``). Logs and progress go to stderr. Exit codes: 0 done,
1 done but nothing usable (or ``--strict`` and faults), 2 bad input or usage.

Imports of torch, MLflow, Prefect, pandas and numpy stay inside the commands that need them (``# noqa: PLC0415``),
so ``steelqc --help`` and the light commands start fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType

try:  # typer >= 0.26 carries its own copy of click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError

from steelqc.flows import deployments
from steelqc.flows import summary as readable
from steelqc.infra import mlflow_auth, services
from steelqc.model_registry import schema
from steelqc.tasks import homeformat, redact
from steelqc.tasks.config import Settings, load_settings

app = typer.Typer(
    name="steelqc",
    help="Train, check and safely deploy a steel-surface defect classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("steelqc")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")]


class _State:
    settings: Settings | None = None
    config: Path | None = None
    emitted: bool = False


_state = _State()


@app.callback()
def main(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file (also STEELQC_CONFIG).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")] = False,
) -> None:
    """steelqc: MLOps for steel-surface defect classification."""
    setup_logging(verbose)
    _state.config = config
    _use_local_servers()


# Libraries that log every request or migration at INFO: quiet unless -v. (Prefect keeps this configuration: its
# logging setup leaves the root handler and the levels of loggers it does not name alone.)
NOISY_LOGGERS = (
    "httpx",
    "httpcore",
    "urllib3",
    "alembic",
    "botocore",
    "boto3",
    "s3transfer",
    "mlflow.store.db.utils",
)


def setup_logging(verbose: bool) -> None:
    """Logs on stderr: INFO (DEBUG with -v); request and migration logs of libraries at WARNING unless -v. Every
    record is redacted (credentials masked: ``tasks/redact.py``) whichever handler writes it."""
    redact.install()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def _use_local_servers() -> None:
    """Talk to the servers `steelqc server start` runs, when they are up and nothing else is configured."""
    if os.environ.get("PREFECT_API_URL"):
        return
    try:
        cfg = load_settings(_state.config)
    except Exception:  # reported by the command itself
        return
    if services.read_pid(cfg.home, "prefect") is not None:
        url = f"http://{cfg.server_host}:{cfg.prefect_port}/api"
        if services.healthy(f"{url}/health", 1.0):
            os.environ["PREFECT_API_URL"] = url
            log.debug("using the local Prefect server at %s", url)


def settings(**overrides: Any) -> Settings:
    """Settings for this invocation (YAML from --config, then env, then overrides); STEELQC_HOME must be usable."""
    as_json = "--json" in sys.argv
    try:
        cfg = load_settings(_state.config, **overrides)
    except Exception as exc:  # pydantic ValidationError, missing YAML file
        _fail(f"invalid settings: {redact.error_text(exc)}", as_json=as_json)
        raise  # unreachable
    redact.remember(redact.secrets_in_settings(cfg))
    fault = unusable_dir(cfg.home)
    if fault:
        _fail(f"STEELQC_HOME {cfg.home}: {fault}", as_json, file=str(cfg.home), row=None)
    try:
        homeformat.check_home(cfg.home)  # a home written by a newer steelqc is refused, an older one migrated
    except homeformat.HomeFormatError as exc:
        _fail(str(exc), as_json, file=str(exc.path), row=None)
    return cfg


def unusable_dir(path: Path) -> str | None:
    """Why ``path`` cannot hold steelqc's output folders (None when it can): created when missing, must be writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return "exists and is not a directory"
    except OSError as exc:
        return f"cannot create it ({exc.strerror or exc})"
    if not path.is_dir():
        return "is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    return None


def emit(summary: dict, as_json: bool, view: Callable[[dict], RenderableType] = readable.listing) -> None:
    """Print the summary: one JSON object on stdout, or ``view(summary)`` (a short readable listing by default)."""
    _state.emitted = True
    if as_json:  # credentials never reach stdout: every string of the plain JSON redacted
        plain = redact.redact_obj(json.loads(json.dumps(summary, default=str)))
        sys.stdout.write(json.dumps(plain) + "\n")
        sys.stdout.flush()
        return
    # wide enough for paths when piped; a terminal's own width otherwise (and COLUMNS wins, as rich reads it)
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120
    console = Console(file=sys.stdout, width=width, soft_wrap=False)
    with console.capture() as captured:
        console.print(view(summary))
    sys.stdout.write(redact.redact("".join(line.rstrip() + "\n" for line in captured.get().splitlines())))
    sys.stdout.flush()


def _fail(message: str, as_json: bool, code: int = 2, **extra: Any) -> None:
    log.error(message)
    if as_json:
        emit({"error": message, "file": None, "row": None, **extra}, True)
    raise typer.Exit(code)


def run(argv: list[str] | None = None) -> None:
    """The ``steelqc`` entry point: the Typer app, with every failure an exit code and, under ``--json``, one
    JSON object ``{"error", "file", "row"}`` on stdout: usage errors (missing argument, a bad value, an unknown
    option) and unusable paths exit 2, anything unexpected exits 1. Never a bare traceback."""
    args = sys.argv[1:] if argv is None else argv
    as_json = "--json" in args

    def fail(message: str, code: int, file: str | None = None) -> None:
        if as_json and not _state.emitted:
            emit({"error": message, "file": file, "row": None}, True)
        sys.exit(code)

    try:
        code = app(args=args, prog_name="steelqc", standalone_mode=False)
    except UsageError as exc:
        exc.show()
        where = f"{exc.ctx.command_path}: " if exc.ctx else ""
        fail(f"usage: {where}{exc.format_message()}", 2)
    except ClickException as exc:
        exc.show()
        fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        fail("aborted", 130)
    except OSError as exc:  # an output path that is a file, /proc, /dev/null, a full disk...
        file = exc.filename if exc.filename is None else str(exc.filename)
        message = f"{exc.strerror or type(exc).__name__}: {file}" if file else f"{type(exc).__name__}: {exc}"
        log.error("%s", message)
        fail(message, 2, file)
    except Exception as exc:
        if advice := schema.explain(exc):  # an MLflow database of another MLflow: what to do, no traceback
            log.error("%s", advice)
            fail(advice, 1)
        log.exception("steelqc failed")
        fail(f"{type(exc).__name__}: {exc}", 1)
    sys.exit(code if isinstance(code, int) else 0)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write train.csv and train_images/ into.")],
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Number of images.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 42,
    mix: Annotated[
        str | None, typer.Option(help="Label mix, e.g. '0=0.5,1=0.2,2=0.1,3=0.1,4=0.1' (default Severstal-like).")
    ] = None,
    multi_defect_rate: Annotated[float, typer.Option(help="Share of defect images with a second class.")] = 0.05,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing data set in --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate a Severstal-format data set (steel-like texture, four defect kinds, RLE masks)."""
    from steelqc.tasks.data.synth import generate_dataset, parse_mix  # noqa: PLC0415  (numpy, Pillow: slow)

    cfg = settings()
    if fault := unusable_dir(out):
        _fail(f"--out {out}: {fault}", as_json, file=str(out))
    try:
        summary = generate_dataset(
            out,
            n_images=n_images,
            seed=seed,
            mix=parse_mix(mix) if mix else None,
            shape=cfg.image_shape,
            multi_defect_rate=multi_defect_rate,
            class_names=cfg.class_names,
            label_priority=cfg.priority_ids(),
            overwrite=overwrite,
        )
    except ValueError as exc:
        _fail(str(exc), as_json)
    emit(summary, as_json)


@app.command()
def ingest(
    data: Annotated[
        list[str],
        typer.Argument(
            help="Data directory (Severstal layout or class folders), or NAME=DIR; several for several sources "
            "(joined by class name, ids from the settings' class_names)."
        ),
    ],
    fmt: Annotated[str, typer.Option("--format", help="auto, severstal or folders.")] = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: a new run folder under STEELQC_HOME).")
    ] = None,
    critical_class: Annotated[
        str | None, typer.Option("--critical-class", help="Name of the safety-critical class.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when anything was quarantined.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Validate a data set (or several sources): manifest, quarantine list (with reasons) and fingerprint."""
    from steelqc.tasks.data.ingest import IngestError, check_out_dir  # noqa: PLC0415  (pandas: slow)
    from steelqc.tasks.data.sources import parse_sources, sources_to_folder  # noqa: PLC0415  (pandas: slow)

    cfg = settings()
    if fmt not in ("auto", "severstal", "folders"):
        _fail(f"--format must be auto, severstal or folders, not {fmt!r}", as_json)
    try:
        sources = parse_sources(data)
        if out is not None:
            for source in sources:
                check_out_dir(out, source.path)  # before creating it: never a folder inside the data
            if fault := unusable_dir(out):
                _fail(f"--out {out}: {fault}", as_json, file=str(out))
        _, summary = sources_to_folder(sources, cfg, fmt, critical_class, out)  # type: ignore[arg-type]
    except IngestError as exc:
        _fail(str(exc), as_json, file=exc.file, row=exc.row)
    log.info(
        "ingest: %d valid, %d quarantined; manifest %s", summary["valid"], summary["quarantined"], summary["manifest"]
    )
    emit(summary, as_json)
    if summary["valid"] == 0:
        log.error("no valid image in %s; see %s", ", ".join(data), summary["quarantine"])
        raise typer.Exit(1)
    if strict and summary["quarantined"]:
        raise typer.Exit(1)


@app.command()
def split(
    run_dir: Annotated[Path, typer.Argument(help="Run folder holding manifest.csv (from `steelqc ingest`).")],
    ledger: Annotated[
        bool, typer.Option(help="Keep earlier assignments sticky via STEELQC_HOME/split_ledger.csv.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Split a manifest into train/val/test (stratified, stable under growth) in RUN_DIR/splits/."""
    from steelqc.tasks.data.prepare import split_run_folder  # noqa: PLC0415  (pandas: slow)
    from steelqc.tasks.data.split import SplitError  # noqa: PLC0415  (pandas: slow)

    cfg = settings()
    manifest_path = run_dir / "manifest.csv"
    if not manifest_path.is_file():
        _fail(f"{manifest_path} not found (run `steelqc ingest` first)", as_json)
    try:
        summary = split_run_folder(run_dir, cfg, ledger)
    except SplitError as exc:
        _fail(str(exc), as_json)
    emit(summary, as_json)


@contextlib.contextmanager
def prefect_api(cfg: Settings) -> Iterator[None]:
    """The Prefect API for a command that runs a flow: the configured or local server, else a temporary one that
    cannot outlive this process (Prefect's own temporary server survives a ``kill -9`` of the command). Flow runs
    send heartbeats and the server marks silent ones Crashed (flows/heartbeats.py); client retries are bounded."""
    from prefect.events.worker import EventsWorker  # noqa: PLC0415  (Prefect: slow)
    from prefect.logging.handlers import APILogWorker  # noqa: PLC0415  (Prefect: slow)
    from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: PLC0415  (Prefect: slow)

    from steelqc.flows import heartbeats  # noqa: PLC0415  (Prefect: slow)

    heartbeats.bound_flow_processes(cfg)
    if os.environ.get("PREFECT_API_URL"):
        services.reap_orphans(cfg.home)
        with temporary_settings(updates=heartbeats.client_settings(cfg)):
            _watch_silent_runs(cfg)
            yield
        return
    with (
        services.temporary_prefect(cfg.home) as url,
        temporary_settings(updates={PREFECT_API_URL: url, **heartbeats.client_settings(cfg)}),
    ):
        os.environ["PREFECT_API_URL"] = url  # for worker processes this command starts
        _watch_silent_runs(cfg)
        try:
            yield
        finally:
            APILogWorker.drain_all(timeout=5)  # the run's logs and events reach the server before it stops
            EventsWorker.drain_all(timeout=5)
            os.environ.pop("PREFECT_API_URL", None)


def _watch_silent_runs(cfg: Settings) -> None:
    """The Prefect server's automation that marks silent flow runs Crashed; a server that refuses it is logged."""
    from steelqc.flows.heartbeats import AUTOMATION, ensure_zombie_automation  # noqa: PLC0415  (Prefect: slow)

    try:
        ensure_zombie_automation(cfg)
    except Exception as exc:
        log.warning("could not set up the automation %s on the Prefect server (%s): a run that goes silent there "
                    "stays Running", AUTOMATION, exc)  # fmt: skip


def _fail_run(exc: Exception, cfg: Settings, as_json: bool, what: str, then: str) -> None:
    """Exit 1 for a failed flow: a fault of a server or the disk with its give-up message (flows/faults.py), anything
    else with its type and text."""
    from steelqc.flows.faults import explain  # noqa: PLC0415  (settings only, but keep the CLI's start-up small)

    fault = explain(exc, cfg, then)
    if fault is None:
        log.exception(what)
        _fail(f"{what}: {type(exc).__name__}: {exc}", as_json, code=1)
    log.debug("%s", what, exc_info=exc)
    if fault.kind == "prefect-unreachable":
        _exit_at_once(fault.message, as_json, **fault.extra())
    _fail(fault.message, as_json, code=1, **fault.extra())


def _exit_at_once(message: str, as_json: bool, **extra: Any) -> None:
    """Report ``message`` and exit 1 now: at a normal exit Prefect's event and log workers try to deliver every queued
    item to the unreachable server, one connection timeout each (minutes, measured: 3.5 min after a tiny run)."""
    log.error(message)
    if as_json:
        emit({"error": message, "file": None, "row": None, **extra}, True)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(1)


def _run_training(as_json: bool, **kwargs: Any) -> dict:
    """Run the training-pipeline flow; bad input exits 2, a failed run exits 1."""
    from steelqc.flows.faults import RESUME  # noqa: PLC0415  (see _fail_run)
    from steelqc.flows.training import training_pipeline  # noqa: PLC0415  (torch, MLflow, Prefect: slow)
    from steelqc.tasks.data.ingest import IngestError  # noqa: PLC0415  (pandas: slow)

    cfg = settings()
    try:
        with prefect_api(cfg):
            result = training_pipeline(**kwargs)
        return result.to_dict() if hasattr(result, "to_dict") else result  # the flow's TrainingResult as JSON
    except IngestError as exc:
        _fail(str(exc), as_json, file=exc.file, row=exc.row)
    except ValueError as exc:  # bad option values (unknown model, profile, ...)
        _fail(str(exc), as_json)
    except Exception as exc:
        _fail_run(exc, cfg, as_json, "training pipeline failed", RESUME)
    raise AssertionError("unreachable")


def _training_settings(approval: str | None, as_json: bool) -> Settings:
    """The settings of a training run, checked before Prefect starts (manual approval needs a lasting server)."""
    if approval not in (None, "auto", "manual"):
        _fail(f"--approval must be auto or manual, not {approval!r}", as_json)
    cfg = settings()
    if (approval or cfg.approval) == "manual" and not os.environ.get("PREFECT_API_URL"):
        _fail(
            "manual approval needs a Prefect server the reviewer can reach: run `steelqc server start` "
            "(or set PREFECT_API_URL)",
            as_json,
        )
    return cfg


def _prefect_ui() -> str | None:
    """The UI of the Prefect server a flow is about to run on; None for a temporary one (gone after the run)."""
    url = os.environ.get("PREFECT_API_URL")
    return url.rstrip("/").removesuffix("/api") if url else None


def _ui_links(cfg: Settings, summary: dict, prefect_ui: str | None) -> dict[str, str]:
    """Where to look at a run: the MLflow run and model version, the Prefect flow run (when it was kept)."""
    remote = cfg.mlflow_uri.startswith(("http://", "https://"))
    mlflow_ui = cfg.mlflow_uri if remote else f"http://{cfg.server_host}:{cfg.mlflow_port}"
    links = readable.ui_links(summary, mlflow_ui, prefect_ui)
    if prefect_ui is None and summary.get("flow_run_id"):
        links["Prefect run"] = "on a temporary server, gone: `steelqc server start` before a run keeps it in the UI"
    if not remote and services.read_pid(cfg.home, "mlflow") is None:
        links["UIs"] = "not running: `steelqc server start` (MLflow then shows this run and every earlier one)"
    return links


TRAIN_DATA_HELP = (
    "Data directory (Severstal layout or class folders), or NAME=DIR; repeat for several sources (joined by class "
    "name, ids from the settings' class_names)."
)


@app.command()
def train(
    data: Annotated[list[str], typer.Option("--data", help=TRAIN_DATA_HELP)],
    model: Annotated[
        str | None, typer.Option(help="simple_cnn, mobilenet_v2 (default), mobilenet_v2_050 (a student) or resnet50.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (fewer with early stopping on).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, severstal or folders.")] = "auto",
    critical_class: Annotated[str | None, typer.Option("--critical-class", help="Safety-critical class.")] = None,
    approval: Annotated[str | None, typer.Option(help="auto or manual (default: STEELQC_APPROVAL).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the latest unfinished run on the same data.")] = False,
    profile: Annotated[str, typer.Option(help="default, or tiny (CI-sized: small model and images).")] = "default",
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    height: Annotated[int | None, typer.Option(help="Input height (default: chosen for the device).")] = None,
    width: Annotated[int | None, typer.Option(help="Input width.")] = None,
    weights: Annotated[str | None, typer.Option(help="imagenet, none or a state-dict file.")] = None,
    freeze_stages: Annotated[int | None, typer.Option(min=0, max=5)] = None,
    distill_from: Annotated[
        str | None,
        typer.Option(help="Teacher model URI (models:/steel-defect-classifier@champion, ...): learn its soft labels."),
    ] = None,
    distill_temperature: Annotated[float | None, typer.Option(min=0.01, help="Softening temperature (2).")] = None,
    distill_alpha: Annotated[float | None, typer.Option(min=0, max=1, help="Weight of the soft labels (0.5).")] = None,
    processes: Annotated[int | None, typer.Option(min=1, help="Training processes (torchrun DDP; one a GPU).")] = None,
    require_promotion: Annotated[bool, typer.Option(help="Exit 1 unless the model became champion.")] = False,
    tune_trials: Annotated[int, typer.Option(min=0, help="Optuna trials before the final training (total).")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Parallel tuning workers on this machine.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Run the training pipeline: ingest, split, (tune,) train, evaluate, gate, register and promote."""
    cfg, prefect_ui = _training_settings(approval, as_json), _prefect_ui()
    sizes = dict(batch_size=batch_size, lr=lr, height=height, width=width, weights=weights, freeze_stages=freeze_stages)
    sizes.update(distill_from=distill_from, distill_temperature=distill_temperature, distill_alpha=distill_alpha)
    sizes.update(processes=processes)
    run = dict(model=model, epochs=epochs, fmt=fmt, critical_class=critical_class, approval=approval, resume=resume)
    run["data"] = data[0] if len(data) == 1 else list(data)  # one folder as before, or several sources
    summary = _run_training(
        as_json, profile=profile, train_overrides=sizes, tune_trials=tune_trials, tune_workers=workers,
        **run,
    )  # fmt: skip
    emit(summary, as_json, lambda s: readable.training_report(s, _ui_links(cfg, s, prefect_ui)))
    if require_promotion and not summary["promoted"]:
        raise typer.Exit(1)


@app.command()
def tune(
    data: Annotated[list[str], typer.Option("--data", help=TRAIN_DATA_HELP)],
    trials: Annotated[int, typer.Option(min=1, help="Total finished trials the study should hold.")] = 10,
    workers: Annotated[int, typer.Option(min=1, help="Parallel worker processes sharing the study.")] = 1,
    fmt: Annotated[str, typer.Option("--format", help="auto, severstal or folders.")] = "auto",
    critical_class: Annotated[str | None, typer.Option("--critical-class")] = None,
    profile: Annotated[str, typer.Option(help="default, or tiny (CI-sized).")] = "default",
    as_json: JsonOpt = False,
) -> None:
    """Tune hyperparameters with Optuna (resumable: the study is named by data and search space)."""
    from steelqc.flows.tuning import tuning_flow  # noqa: PLC0415  (torch, MLflow, Prefect: slow)
    from steelqc.tasks.data.ingest import IngestError  # noqa: PLC0415  (pandas: slow)

    cfg = settings()
    try:
        with prefect_api(cfg):
            summary = tuning_flow()(
                data=data[0] if len(data) == 1 else list(data),  # one folder as before, or several sources
                trials=trials, workers=workers, fmt=fmt, critical_class=critical_class, profile=profile,
            )  # fmt: skip
    except IngestError as exc:
        _fail(str(exc), as_json, file=exc.file, row=exc.row)
    except Exception as exc:
        _fail_run(exc, cfg, as_json, "tuning failed", "run `steelqc tune` again (the study keeps its finished trials)")
    links = _ui_links(cfg, {"run_id": summary.get("parent_run_id")}, None)
    emit(summary, as_json, lambda s: readable.tuning_report(s, links))


@app.command()
def evaluate(
    model: Annotated[str, typer.Option("--model", help="Model URI, e.g. models:/steel-defect-classifier@champion.")],
    data: Annotated[Path, typer.Option("--data", help="Data directory to score (every valid image).")],
    fmt: Annotated[str, typer.Option("--format", help="auto, severstal or folders.")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Metrics of a registered or logged model on a data set (clean, glare, Grad-CAM in masks)."""
    from steelqc.flows.evaluation import evaluate_model  # noqa: PLC0415  (torch, MLflow: slow)
    from steelqc.tasks.data.ingest import IngestError  # noqa: PLC0415  (pandas: slow)

    cfg = settings()
    try:
        summary = evaluate_model(model, data, cfg, fmt)
    except IngestError as exc:
        _fail(str(exc), as_json, file=exc.file, row=exc.row)
    except Exception as exc:
        _fail(f"cannot evaluate {model}: {type(exc).__name__}: {exc}", as_json)
    emit(summary, as_json, readable.evaluation_report)
    if summary["n_images"] == 0:
        log.error("no usable image in %s: nothing was scored (see %s)", data, summary["run_dir"])
        raise typer.Exit(1)


@app.command()
def predict(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (walked) or s3://bucket/prefix.")],
    model: Annotated[
        str, typer.Option("--model", help="Model URI, or an export directory (steelqc export: ONNX / OpenVINO).")
    ] = "models:/steel-defect-classifier@champion",
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write the records as CSV here.")] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="An export directory's format: onnx, openvino, onnx-int8... (default: its recommended)."
        ),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any image could not be predicted.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Batch inference: label (under the calibrated threshold), probabilities and the critical flag for each image.

    Images stream (decoded on a thread pool while the model runs); each decision is appended to the decision log
    (STEELQC_HOME/decisions/YYYY-MM-DD.jsonl). An unreadable image gets a record with ``error`` (and null label);
    the others are predicted (exit 0, or 1 under --strict)."""
    from steelqc.flows.evaluation import predict_images  # noqa: PLC0415  (torch, MLflow: slow)

    cfg = settings()
    if csv_out is not None and (fault := _unusable_output_file(csv_out)):
        _fail(f"--csv {csv_out}: {fault}", as_json, file=str(csv_out), row=None)
    try:
        summary = predict_images(model, paths, cfg, csv_path=csv_out, progress=True, fmt=fmt)
    except Exception as exc:
        _fail(f"cannot predict with {model}: {type(exc).__name__}: {exc}", as_json)
    for record in summary["predictions"]:
        if record.get("error"):
            log.error("%s: %s", record["image"], record["error"])
    log.info(
        "predicted %d images in %.1f s: %s images/s; decision log %s",
        summary["n_images"], summary["seconds"], summary["images_per_second"], ", ".join(summary["decision_log"]),
    )  # fmt: skip
    emit(summary, as_json, readable.predictions)
    if strict and summary["failed"]:
        raise typer.Exit(1)


def _unusable_output_file(path: Path) -> str | None:
    """Why ``path`` cannot take an output file (a folder, or a parent that is a file), else None."""
    if path.is_dir():
        return "is a folder"
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"{parent} is not a folder"
    return None


@app.command()
def monitor(
    incoming: Annotated[
        str | None,
        typer.Option("--incoming", help="Inbox: a folder or s3://bucket/prefix (default: the monitor_inbox setting)."),
    ] = None,
    show_history: Annotated[bool, typer.Option("--history", help="List the recorded decisions instead.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Decisions --history lists (newest first).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Check the new images in the inbox for drift against the champion's reference; on drift start the nightly
    retrain (at most once per cool-down) or ask for labels; queue images for labelling. Exit 2 on a bad inbox or
    setting, 1 when the run failed (the images then stay pending)."""
    from steelqc.monitoring import monitor as work  # noqa: PLC0415  (torch, MLflow, Evidently: slow)

    cfg = settings()
    if show_history:
        emit({"history": work.history(cfg, limit), "experiment": cfg.monitoring_experiment}, as_json,
             readable.monitor_history)  # fmt: skip
        return
    summary = _run_monitor(cfg, incoming, as_json)
    emit(summary, as_json, readable.monitor_report)


def _run_monitor(cfg: Settings, incoming: str | None, as_json: bool) -> dict:
    """Run the drift-monitor flow; a bad inbox, queue or ledger exits 2, a busy or failed run exits 1."""
    from steelqc.flows.monitoring import drift_monitor  # noqa: PLC0415  (torch, MLflow, Prefect: slow)
    from steelqc.monitoring.inbox import InboxError, open_inbox  # noqa: PLC0415  (boto3: slow)
    from steelqc.monitoring.ledger import LedgerError  # noqa: PLC0415  (boto3: slow)
    from steelqc.monitoring.monitor import MonitorBusy  # noqa: PLC0415  (torch, MLflow: slow)
    from steelqc.monitoring.review import ReviewQueueError  # noqa: PLC0415  (pandas, boto3: slow)

    source = incoming or cfg.inbox
    try:
        open_inbox(source, cfg)  # a bad inbox exits 2 at once, before Prefect retries the listing
        with prefect_api(cfg):
            return drift_monitor(incoming=source).to_dict()
    except (InboxError, LedgerError, ReviewQueueError) as exc:
        _fail(str(exc), as_json, file=source)
    except MonitorBusy as exc:
        _fail(str(exc), as_json, code=1)
    except Exception as exc:
        _fail_run(exc, cfg, as_json, "drift monitor failed", "run `steelqc monitor` again (the ledger keeps its place)")
    raise AssertionError("unreachable")


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Option("--model", help="Model URI.")] = "models:/steel-defect-classifier@champion",
    out: Annotated[Path | None, typer.Option("--out", help="Export directory (new or empty).")] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Training run folder (splits/) instead of the version's own.")
    ] = None,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Try INT8 behind its gate.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Export a model for CPUs in the plant: ONNX and OpenVINO IR (+ INT8 when it passes its gate), bundle.json,
    parity.json; logged as artifacts of the version's run."""
    from steelqc.model_registry.exports import export_registered  # noqa: PLC0415  (torch, MLflow: slow)
    from steelqc.model_registry.store import client, configure  # noqa: PLC0415

    cfg = settings()
    configure(cfg)
    target = out or cfg.home / "exports" / f"export-{uuid.uuid4().hex[:8]}"
    fault = unusable_dir(target)
    if fault:
        _fail(f"--out {target}: {fault}", as_json, file=str(target))
    if any(target.iterdir()):
        _fail(f"--out {target}: not empty", as_json, file=str(target))
    try:
        summary = export_registered(model, target, client(cfg), data=data, int8=int8)
    except Exception as exc:
        _fail(f"cannot export {model}: {type(exc).__name__}: {exc}", as_json)
    emit(summary if as_json else _export_view(summary), as_json)


def _export_view(summary: dict) -> dict:
    """The human summary of ``steelqc export``: where, formats, parity, latency, the INT8 verdict."""
    parity = {k: v for k, v in summary["parity"].items() if isinstance(v, dict)}
    return {
        "export": summary["out"],
        "formats": ", ".join(summary["formats"]),
        "recommended": summary["recommended"],
        "parity": {
            fmt: f"max |Δp| {p['max_abs_diff']:.2e}, decisions agree {p['decision_agreement']:.0%} of {p['n_images']}"
            for fmt, p in parity.items()
        },
        "latency (batch 1)": {fmt: f"{v['p50_ms']:.1f} ms" for fmt, v in summary["latency"].items()},
        "int8": summary["int8"]["reason"],
        "logged": summary.get("logged") or "not logged",
    }


registry = typer.Typer(help="Registry operations with an audit trail.", no_args_is_help=True)
app.add_typer(registry, name="registry")


def _registry_client():
    from steelqc.model_registry.store import client, configure  # noqa: PLC0415  (MLflow: slow)

    cfg = settings()
    configure(cfg)
    return cfg, client(cfg)


@registry.command("history")
def registry_history(as_json: JsonOpt = False) -> None:
    """Every registry decision: when, what, from which version to which, why, by whom."""
    from steelqc.model_registry import promotion  # noqa: PLC0415  (MLflow: slow)

    cfg, c = _registry_client()
    events = promotion.history(c, cfg.registered_model)
    if as_json:
        emit(
            {
                "registered_model": cfg.registered_model,
                "aliases": promotion.aliases(c, cfg.registered_model),
                "events": events,
            },
            True,
        )
        return
    for e in events:
        moved = e["action"] in ("challenger", *promotion.PROMOTING_ACTIONS)
        move = (
            f"{e.get('alias') or '-'}: {e.get('from_version') or '-'} -> {e.get('to_version')}"
            if moved
            else f"v{e.get('to_version')} ({e.get('alias') or '-'} stays {e.get('from_version') or '-'})"
        )
        typer.echo(f"{e['seq']:>4} {e['time']} {e['action']:<18} {move:<24} {e.get('actor')}  {e.get('reason')}")


@registry.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Model version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "manual promotion",
    as_json: JsonOpt = False,
) -> None:
    """Point an alias at a version whose gates passed (audited)."""
    from steelqc.model_registry import promotion  # noqa: PLC0415  (MLflow: slow)

    cfg, c = _registry_client()
    try:
        event = promotion.move_alias(
            c, cfg.registered_model, alias, version, action="promote", reason=reason, timeout_s=cfg.lock_timeout_s
        )
    except (promotion.PromotionRefused, promotion.LockTimeout) as exc:
        _fail(str(exc), as_json, code=1)
    except Exception as exc:
        _fail(f"cannot promote version {version}: {exc}", as_json)
    emit({"event": event, "aliases": promotion.aliases(c, cfg.registered_model)}, as_json)


@registry.command("approve")
def registry_approve(
    flow_run_id: Annotated[str, typer.Argument(help="The paused training run's flow run id (Prefect UI, alert).")],
    reviewer: Annotated[str, typer.Option(help="Your name; it must differ from whoever started the run.")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject: the champion stays as it is.")] = False,
    comment: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "",
    wait: Annotated[float, typer.Option(help="Seconds to wait for the run to apply the decision.")] = 120.0,
    as_json: JsonOpt = False,
) -> None:
    """Approve (or --reject) a training run paused for approval; prints the audit event the run wrote.

    Exit 0 when the decision was applied, 1 when the run refused it (self-approval, champion moved meanwhile).
    """
    from prefect.exceptions import ObjectNotFound  # noqa: PLC0415  (Prefect: slow)
    from prefect.flow_runs import resume_flow_run  # noqa: PLC0415  (Prefect: slow)

    from steelqc.model_registry import approval, promotion  # noqa: PLC0415  (MLflow: slow)

    cfg, c = _registry_client()
    try:
        run_uuid = uuid.UUID(flow_run_id)
    except ValueError:
        _fail(f"not a flow run id: {flow_run_id!r}", as_json)
    before = {e["seq"] for e in promotion.history(c, cfg.registered_model)}
    decision = {"decision": "reject" if reject else "approve", "reviewer": reviewer, "comment": comment}
    try:
        resume_flow_run(run_uuid, run_input=decision)
    except ObjectNotFound:
        _fail(f"no flow run {flow_run_id} on the Prefect server", as_json)
    except Exception as exc:  # not paused, pause expired, bad input
        _fail(f"cannot resume flow run {flow_run_id}: {type(exc).__name__}: {exc}", as_json, code=1)
    event = approval.wait_for_decision(c, cfg.registered_model, flow_run_id, before, wait)
    if event is None:
        _fail(f"flow run {flow_run_id} resumed, but recorded no decision within {wait:.0f} s", as_json, code=1)
    applied = not event["action"].endswith("-refused")
    aliases = promotion.aliases(c, cfg.registered_model)
    emit({"flow_run_id": flow_run_id, **decision, "applied": applied, "event": event, "aliases": aliases}, as_json)
    if not applied:
        raise typer.Exit(1)


@registry.command("rollback")
def registry_rollback(
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "rollback",
    as_json: JsonOpt = False,
) -> None:
    """Put back the last earlier champion that passed its gates (audited)."""
    from steelqc.model_registry import promotion  # noqa: PLC0415  (MLflow: slow)

    cfg, c = _registry_client()
    try:
        event = promotion.rollback(c, cfg.registered_model, reason=reason)
    except (promotion.PromotionRefused, promotion.LockTimeout) as exc:
        _fail(str(exc), as_json, code=1)
    emit({"event": event, "aliases": promotion.aliases(c, cfg.registered_model)}, as_json)


@registry.command("repackage")
def registry_repackage(
    version: Annotated[str | None, typer.Argument(help="Version to repackage (default: every old-format one).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild old-format versions (pickled python_model.pkl) from their weight files, never unpickling them, as new
    versions with hash tags; their aliases follow (audited). Exit 1 when one could not be repackaged."""
    from steelqc.model_registry import packaging, promotion  # noqa: PLC0415  (MLflow, torch: slow)

    cfg, c = _registry_client()
    name, timeout = cfg.registered_model, cfg.lock_timeout_s
    try:
        results = (
            [packaging.repackage(c, name, version, timeout)] if version else packaging.repackage_all(c, name, timeout)
        )
    except (packaging.UnsafeModel, promotion.PromotionRefused, promotion.LockTimeout) as exc:
        _fail(str(exc), as_json, code=1)
    except Exception as exc:
        _fail(f"cannot repackage version {version}: {type(exc).__name__}: {exc}", as_json)
    emit({"repackaged": results, "aliases": promotion.aliases(c, name)}, as_json)
    if any("error" in r for r in results):
        raise typer.Exit(1)


review = typer.Typer(
    help='The labelling queue that the drift monitor and training runs fill (README "Drift monitoring").',
    no_args_is_help=True,
)
app.add_typer(review, name="review")


def _label_desk(as_json: bool):
    """The settings' local review queue, ready to label; a bad queue setting exits 2."""
    from steelqc.monitoring.review_labels import LabelDesk, LabelError  # noqa: PLC0415  (review.py: boto3)

    try:
        return LabelDesk.open(settings())
    except LabelError as exc:
        _fail(str(exc), as_json)
        raise  # unreachable


def _apply_labels(rows: list, as_json: bool, file: str | None = None) -> dict:
    """Apply the label rows all or nothing; the summary: each changed image, then the queue's counts."""
    from steelqc.monitoring.review_labels import LabelError, summary_of  # noqa: PLC0415  (review.py: boto3)

    desk = _label_desk(as_json)
    try:
        changed = desk.apply(rows, file)
    except LabelError as exc:
        _fail(str(exc), as_json, file=exc.file, row=exc.row)
        raise  # unreachable
    alerts = _alert_missed_critical(desk.settings, changed)
    return {"labelled": [summary_of(e) for e in changed], **desk.counts(), "queue": str(desk.root),
            "reviewed_dir": str(desk.reviewed), **({"alerts": alerts} if alerts else {})}  # fmt: skip


def _alert_missed_critical(cfg: Settings, changed: list[dict]) -> list[dict]:
    """One ``missed-critical`` alert per image just reviewed as the critical class that the model had queued as
    another class (README "Drift monitoring"); what was sent."""
    from steelqc.flows.alerts import notify  # noqa: PLC0415  (prefect: only when needed)
    from steelqc.monitoring.live_figures import is_missed_critical  # noqa: PLC0415

    sent = []
    for entry in changed:
        if entry.get("status") == "reviewed" and is_missed_critical(entry, cfg.critical_class):
            subject = f"reviewed {cfg.critical_class} missed by the model (it said {entry.get('predicted')})"
            details = {"sha256": entry["sha256"], "reviewed_image": entry.get("reviewed_image"),
                       "predicted": entry.get("predicted"), "confidence": entry.get("confidence"),
                       "monitoring_run": entry.get("monitoring_run"), "votes": entry.get("votes")}  # fmt: skip
            sent.append(notify(cfg, "missed-critical", subject, details, None))
    return sent


@review.command("list")
def review_list(
    disputed: Annotated[bool, typer.Option("--disputed", help="Only the images whose labels differ.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The queued images, oldest first, with why each was picked and the votes so far; counts of queued, reviewed
    and disputed images."""
    from steelqc.monitoring.review_labels import summary_of  # noqa: PLC0415  (review.py: boto3)

    desk = _label_desk(as_json)
    entries = [summary_of(e) for e in desk.queued().values() if e.get("disputed") or not disputed]
    emit({**desk.counts(), "queue": str(desk.root), "reviewed_dir": str(desk.reviewed), "images": entries}, as_json)


@review.command("label")
def review_label(
    image: Annotated[str, typer.Argument(help="A queued image: its SHA-256 (or 6+ leading characters), path or name.")],
    label: Annotated[str, typer.Argument(metavar="CLASS", help="Its class (a name of the class_names setting).")],
    reviewer: Annotated[str | None, typer.Option(help="Who labels (default: the OS user).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Label one queued image; it moves into STEELQC_HOME/reviewed/<class>/ once review_votes labels agree, and is
    marked disputed when labels differ. Exit 2 on an unknown image or class."""
    from steelqc.monitoring.review_labels import LabelRow, default_reviewer  # noqa: PLC0415  (review.py: boto3)

    row = LabelRow(image, label, (reviewer or "").strip() or default_reviewer())
    emit(_apply_labels([row], as_json), as_json)


@review.command("import")
def review_import(
    file: Annotated[Path, typer.Argument(help="CSV with the columns image,label,reviewer.")],
    as_json: JsonOpt = False,
) -> None:
    """Apply a CSV of labels (image,label,reviewer) all or nothing: a bad row exits 2 naming the file, row and
    fault, and no label of the file is applied."""
    from steelqc.monitoring.review_labels import LabelError, parse_label_csv, read_label_file  # noqa: PLC0415

    try:
        rows = parse_label_csv(read_label_file(file, settings().max_csv_bytes), str(file))
    except LabelError as exc:
        _fail(str(exc), as_json, file=exc.file, row=exc.row)
        raise  # unreachable
    emit({"file": str(file), "rows": len(rows), **_apply_labels(rows, as_json, str(file))}, as_json)


server = typer.Typer(help="Local Prefect (UI on :4200) and MLflow (:5000) servers.", no_args_is_help=True)
app.add_typer(server, name="server")
WhichOpt = Annotated[list[str] | None, typer.Option("--only", help="prefect or mlflow (default both).")]


def _server_plans(cfg: Settings, auth: mlflow_auth.MlflowAuth | None = None) -> dict:
    return services.plans(
        cfg.home,
        cfg.server_host,
        cfg.prefect_port,
        cfg.mlflow_port,
        cfg.mlflow_uri,
        cfg.artifacts_destination or cfg.artifact_root,
        cfg.database_url,
        cfg.database_prefix,
        cfg.s3_endpoint_url,
        auth,
    )


def _mlflow_auth(cfg: Settings, names: list[str], as_json: bool) -> mlflow_auth.MlflowAuth | None:
    """MLflow's basic auth when the setting is on and MLflow starts (infra/mlflow_auth.py); missing admin
    credentials exit 2."""
    if not cfg.mlflow_auth or "mlflow" not in names:
        return None
    try:
        return mlflow_auth.from_settings(cfg.home, cfg.database_url, cfg.database_prefix)
    except mlflow_auth.AuthSetupError as exc:
        _fail(str(exc), as_json)
        raise  # unreachable


def _which(only: list[str] | None, as_json: bool) -> list[str]:
    names = only or list(services.SERVICES)
    unknown = sorted(set(names) - set(services.SERVICES))
    if unknown:
        _fail(f"unknown server {unknown}; choose from {list(services.SERVICES)}", as_json)
    return names


@server.command("start")
def server_start(only: WhichOpt = None, as_json: JsonOpt = False) -> None:
    """Start the servers in the background (logs and pid files under STEELQC_HOME/servers); wait until healthy."""
    cfg = settings()
    names = _which(only, as_json)
    auth, out = _mlflow_auth(cfg, names, as_json), {}
    try:
        if cfg.database_url:
            for name in [*names, *(["mlflow_auth"] if auth else [])]:
                services.ensure_database(cfg.database_url, f"{cfg.database_prefix}_{name}")
        if auth:
            mlflow_auth.write_config(auth)  # the users' database and who may log in (0600)
        all_plans = _server_plans(cfg, auth)
        out = services.start_all(cfg.home, [all_plans[name] for name in names])
    except Exception as exc:
        _fail(f"server start failed: {exc}", as_json, code=1, servers=out)
    if "prefect" in names:
        _on_server(f"{all_plans['prefect'].url}/api", _watch_silent_runs, cfg)
    ui = {"prefect": all_plans["prefect"].url, "mlflow": all_plans["mlflow"].url}
    emit({"servers": out, "ui": ui, "mlflow_auth": auth is not None}, as_json)


def _on_server(api_url: str, call: Callable[[Settings], None], cfg: Settings) -> None:
    """``call(cfg)`` with Prefect's client pointed at ``api_url``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: PLC0415  (Prefect: slow)

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        call(cfg)


@server.command("stop")
def server_stop(only: WhichOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the servers started by `steelqc server start`."""
    cfg = settings()
    emit({"servers": {name: services.stop(cfg.home, name) for name in _which(only, as_json)}}, as_json)


@server.command("status")
def server_status(as_json: JsonOpt = False) -> None:
    """Whether each server runs and answers its health check. Exit 1 when one is down."""
    cfg = settings()
    out = {name: services.status(cfg.home, plan) for name, plan in _server_plans(cfg).items()}
    emit({"servers": out}, as_json)
    if not all(s["running"] and s["healthy"] for s in out.values()):
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(
    register_only: Annotated[bool, typer.Option(help="Register the deployments and exit (no scheduling).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register the deployments (training-pipeline/nightly-retrain, ...) and run their schedules until stopped.

    Needs a Prefect server (`steelqc server start`). Stopping this process leaves the schedules active; starting
    it again (a re-deploy) keeps them.
    """
    cfg = settings()
    if not os.environ.get("PREFECT_API_URL"):
        _fail("steelqc serve needs a Prefect server: run `steelqc server start` (or set PREFECT_API_URL)", as_json)
    from steelqc.flows.heartbeats import bound_flow_processes  # noqa: PLC0415  (Prefect: slow)

    bound_flow_processes(cfg)  # the flow-run processes serve starts send heartbeats
    _watch_silent_runs(cfg)
    try:
        registered = deployments.register(cfg)
    except Exception as exc:
        _fail(f"cannot register deployments: {type(exc).__name__}: {exc}", as_json, code=1)
    emit(
        {"deployments": registered, "serving": not register_only, "prefect_api": os.environ["PREFECT_API_URL"]}, as_json
    )
    if not register_only:
        cfg.incoming_dir.mkdir(parents=True, exist_ok=True)
        try:
            deployments.serve(cfg)
        except KeyboardInterrupt:
            log.info("steelqc serve stopped; the schedules stay active")
        finally:  # nothing left to do: background threads of the runner must not hold the exit (seen: > 3 min)
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)


DEMO_MIX = "0=0.28,1=0.22,2=0.16,3=0.20,4=0.14"


@app.command()
def demo(
    n_images: Annotated[int, typer.Option("--n-images", min=50, help="Images to generate.")] = 800,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    profile: Annotated[str, typer.Option(help="default, or tiny (seconds, for a smoke test).")] = "default",
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs.")] = 6,
    height: Annotated[int, typer.Option(help="Input height (the demo trades resolution for time on CPU).")] = 96,
    width: Annotated[int, typer.Option(help="Input width (aspect kept: 96x608 ~ 256x1600).")] = 608,
    as_json: JsonOpt = False,
) -> None:
    """Generate a data set (a floor per class so the gates mean something), train on it, say where to look.

    Sized to finish in minutes on 2 CPU cores: 800 images (about 26 test cracks, so one miss still gives recall
    0.96), MobileNetV2 (ImageNet weights, offline), 96x608 input, at most 6 epochs. `steelqc train` uses 128x800
    on CPU by default.
    """
    from steelqc.tasks.data.synth import generate_dataset, parse_mix  # noqa: PLC0415  (numpy, Pillow: slow)

    cfg, prefect_ui = settings(), _prefect_ui()
    data = cfg.home / "demo-data" / f"seed{seed}-n{n_images}"
    if (data / "train.csv").exists():
        log.info("reusing generated data in %s", data)
    else:
        log.info("generating %d images into %s", n_images, data)
        generate_dataset(data, n_images=n_images, seed=seed, mix=parse_mix(DEMO_MIX), shape=cfg.image_shape)
    sizes = {"height": height, "width": width} if profile == "default" else {}
    summary = _run_training(as_json, data=str(data), epochs=epochs, profile=profile, train_overrides=sizes)
    summary["demo_data"] = str(data)
    summary["next"] = {
        "servers": "steelqc server start   (Prefect UI and MLflow UI in the background; steelqc server stop)",
        "mlflow_ui": f"http://{cfg.server_host}:{cfg.mlflow_port} (runs, plots, the registry)",
        "prefect_ui": f"http://{cfg.server_host}:{cfg.prefect_port} (runs made while the server is up)",
        "evaluate_champion": f"steelqc evaluate --model models:/steel-defect-classifier@champion --data {data} --json",
        "history": "steelqc registry history",
        "monitor": f"put new images in {cfg.inbox}, then: steelqc monitor   (drift check against the champion)",
    }
    emit(summary, as_json, lambda s: readable.demo_report(s, _ui_links(cfg, s, prefect_ui)))


@app.command("gc")
def gc_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bound STEELQC_HOME: old run folders, drift-monitor runs, decision-log days, stale review images, oversized
    server logs and cache entries, as the gc settings say; never what a registered version needs (README "Keeping
    it running"). Exit 1 when the registry cannot be read (nothing is removed then) or a removal failed."""
    from steelqc.model_registry.store import client, configure  # noqa: PLC0415  (MLflow: slow)
    from steelqc.monitoring.housekeeping import collect  # noqa: PLC0415  (MLflow: slow)

    cfg = settings()
    try:
        configure(cfg)
        plan = collect(cfg, client(cfg), dry_run)
    except Exception as exc:
        _fail_run(
            exc, cfg, as_json, "gc failed", "run `steelqc gc` again (the registry is read before anything is removed)"
        )
        raise  # unreachable
    emit(plan.to_dict(), as_json, lambda s: readable.listing(_gc_lines(s)))
    if plan.errors:
        raise typer.Exit(1)


def _gc_lines(summary: dict) -> dict:
    """The short listing of `steelqc gc`: bytes freed, then items and bytes of each kind, what was kept and why."""
    mib = lambda n: f"{n / 1024**2:.1f} MiB"  # noqa: E731
    lines = {"would free" if summary["dry_run"] else "freed": mib(summary["freed_bytes"])}
    lines |= {kind: f"{v['items']} ({mib(v['bytes'])})" for kind, v in summary["by_kind"].items()}
    lines["kept"] = summary["kept"] or "nothing needed kept beyond the newest"
    return lines | ({"errors": summary["errors"]} if summary["errors"] else {})


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8501,
    host: Annotated[str, typer.Option(help="Address to bind (no login: keep 127.0.0.1 unless behind a proxy).")] = (
        "127.0.0.1"
    ),
    as_json: JsonOpt = False,
) -> None:
    """The inspection dashboard (Streamlit): Inspect, Review, Models, Monitoring; runs until stopped (README
    "Inspection dashboard"). Its address goes to stdout first (one JSON object with --json)."""
    from steelqc.dashboard.server import run as run_dashboard  # noqa: PLC0415  (Streamlit: slow)

    emit({"url": f"http://{host}:{port}", "host": host, "port": port}, as_json)
    code = run_dashboard(port=port, host=host)
    if code not in (0, -2, 130):  # Ctrl-C stops it on purpose
        log.error("the dashboard stopped with exit code %s", code)
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    run()
