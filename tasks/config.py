"""One typed settings object for steelqc (env prefix ``STEELQC_``, optional YAML file).

Precedence, highest first: keyword arguments, ``STEELQC_*`` environment variables, the YAML file named by
``STEELQC_CONFIG`` (or passed to :func:`load_settings`), then the embedded defaults below, which keep all state
under ``STEELQC_HOME`` (default ``.steelqc/`` in the working directory).
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CLASS_NAMES: dict[int, str] = {0: "ok", 1: "crack", 2: "scratch", 3: "dent", 4: "other"}
SEVERSTAL_SHAPE: tuple[int, int] = (256, 1600)
"""(height, width) of a Severstal image: the default image size and RLE mask shape (defined here only)."""
DEFAULT_SEED = 42
REVIEWED_SOURCE = "reviewed"
"""Name (and folder under ``home``) of the data source that `steelqc review` fills."""
NIGHTLY_DATA = "@nightly"
"""The ``data`` of the nightly deployment: resolved to :attr:`Settings.nightly_sources` when a run starts, so images
reviewed after `steelqc serve` registered the deployment join the next run."""
OPTUNA_HEARTBEAT_S = 30
OPTUNA_GRACE_S = 90
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest image file ingest reads (a 1600x256 Severstal image is under 2 MiB); larger files are quarantined unread."""
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
"""Most pixels an image may claim before it is decoded (a decompression bomb is refused from its header)."""
DEFAULT_MAX_CSV_BYTES = 256 * 1024 * 1024
"""Largest CSV steelqc reads (train.csv, a review label file): Severstal's full train.csv is about 4 MB."""


class Gates(BaseModel):
    """Thresholds a model version must meet before it may become `challenger`."""

    macro_f1_min: float = 0.80
    critical_recall_min: float = 0.95
    critical_precision_min: float = 0.50
    glare_delta_f1_max: float = 0.03
    champion_macro_f1_tolerance: float = 0.005
    min_test_support_per_class: int = 5
    min_source_macro_f1: float = 0.70
    """Floor of every data source's own test macro-F1 (several sources only; a source with fewer than
    ``min_test_support_per_class`` test images in a class it holds is reported, not judged)."""


class TrainDefaults(BaseModel):
    """The training defaults: the one source of ``steelqc.tasks.model.train.TrainConfig``'s defaults, and what
    ``STEELQC_TRAIN__*`` settings change; CLI options override them.

    ``height``/``width`` None = chosen for the device (aspect-preserving; e.g. 128x800 for Severstal on CPU);
    ``num_workers`` None = chosen for the device.
    """

    model: str = "mobilenet_v2"
    epochs: int = 8
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    scheduler: Literal["none", "cosine"] = "cosine"
    patience: int = 0  # epochs without validation gain before stopping; 0 = off (README "Training recipe")
    freeze_stages: int = 0
    weights: str = "imagenet"
    balanced_sampler: bool = True
    weighted_loss: bool = False  # the balanced sampler already corrects the imbalance; both on corrects it twice
    num_workers: int | None = None  # None: 0 on CPU (decoding is not the bottleneck), cores - 1 on CUDA
    height: int | None = None
    width: int | None = None
    cache_images: bool = True
    augment: Literal["glare-v1", "light-v2"] = "light-v2"  # photometric preset (tasks/data/presets.py)
    label_smoothing: float = 0.0
    distill_temperature: float = 2.0  # softens teacher and student logits (--distill-from; README "Distillation")
    distill_alpha: float = 0.5  # weight of the teacher's soft labels; 1 - alpha on the hard labels
    ema_decay: float = 0.99  # per-step decay of an exponential moving average of the weights; 0 = off
    amp: bool = True  # mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16 (README "Training speed")
    threads: int | None = None  # torch threads; None = the CPUs this process may use (affinity, cgroup quota)
    processes: int = Field(
        default=1,
        ge=1,
        description="Training processes on this machine: above 1, `torchrun --nproc_per_node N` runs data-parallel "
        'training (DDP), one process a GPU (README "Scaling"); batch_size is per process, lr unchanged.',
    )
    ddp_backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on the CPU


# A CI-sized profile: tiny model, small images, one epoch (tests run the real pipeline with it).
TINY_PROFILE: dict[str, Any] = {
    "model": "simple_cnn",
    "epochs": 1,
    "batch_size": 8,
    "weights": "none",
    "height": 32,
    "width": 192,
    "num_workers": 0,
}


class CacheSettings(BaseModel):
    """The decoded-image cache (``steelqc.tasks.data.cache.ImageCache``): ``STEELQC_CACHE__*`` settings.

    Least recently used images leave each tier once it holds more than its limit; a limit of 0 turns that tier
    off. ``dir`` None = ``STEELQC_HOME/cache/images`` (see :meth:`root`); the disk tier is kept across runs.
    """

    max_bytes_memory: int = Field(default=2 * 1024**3, ge=0, description="Memory tier limit (0: off).")
    max_bytes_disk: int = Field(default=20 * 1024**3, ge=0, description="Disk tier limit (0: off).")
    dir: Path | None = Field(default=None, description="Disk tier folder; default STEELQC_HOME/cache/images.")

    def root(self, home: Path) -> Path:
        """The disk tier's folder for the state root ``home`` (``Settings.home``)."""
        return self.dir if self.dir is not None else Path(home) / "cache" / "images"


class GcSettings(BaseModel):
    """What `steelqc gc` keeps under ``STEELQC_HOME`` (``STEELQC_GC__*``; README "Keeping it running"). Whatever a
    registered version needs (its run folder, MLflow's store and artifacts, exports, the split ledger, the reviewed
    source) is never removed, whatever these say."""

    keep_runs: int = Field(default=30, ge=0, description="Newest run folders under runs/ kept (besides needed ones).")
    keep_monitor_runs: int = Field(
        default=168, ge=0, description="Newest drift-monitor run folders kept (a week of hourly runs)."
    )
    decisions_days: int = Field(default=400, ge=0, description="Days of predict's decision log kept (0: all).")
    review_days: int = Field(
        default=90,
        ge=0,
        description="Queued review images nobody voted on are dropped after this many days (0: never).",
    )
    logs_max_bytes: int = Field(
        default=64 * 1024**2, ge=0, description="A server log over this is cut to its newest half (0: never)."
    )
    min_age_hours: float = Field(
        default=24.0, ge=0, description="Nothing changed more recently is removed (a run in progress)."
    )


class DriftRule(BaseModel):
    """When a batch of new images counts as drifted (README "Drift monitoring" says why these values)."""

    stattest: str = "wasserstein"
    stattest_threshold: float = 0.3
    drifted_share: float = 0.15
    embedding_method: str = "distance"
    embedding_threshold: float = 0.6


class SplitFractions(BaseModel):
    """Share of each class that goes to train, validation and test."""

    train: float = 0.70
    val: float = 0.15
    test: float = 0.15

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.val, self.test) <= 0:
            raise ValueError(f"split fractions must be positive and sum to 1, got {total:.4f}")
        return self


class Settings(BaseSettings):
    """All steelqc settings. Nested fields use ``__`` in env vars, e.g. ``STEELQC_GATES__MACRO_F1_MIN=0.9``."""

    model_config = SettingsConfigDict(env_prefix="STEELQC_", env_nested_delimiter="__", extra="forbid")

    home: Path = Field(default=Path(".steelqc"), description="Root of all local state (runs, MLflow, Optuna).")
    config: Path | None = Field(default=None, description="Optional YAML settings file.")
    class_names: dict[int, str] = Field(default_factory=lambda: dict(DEFAULT_CLASS_NAMES))
    critical_class: str = "crack"
    label_priority: list[str] | None = Field(
        default=None,
        description="Order in which defect classes win the single label; default: critical first, then by id.",
    )
    image_height: int = SEVERSTAL_SHAPE[0]
    image_width: int = SEVERSTAL_SHAPE[1]
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS, gt=0, description="Images with more pixels are refused (decompression bomb)."
    )
    max_csv_bytes: int = Field(
        default=DEFAULT_MAX_CSV_BYTES, gt=0, description="CSV files (train.csv, label imports) larger are refused."
    )
    max_image_bytes: int = Field(
        default=DEFAULT_MAX_IMAGE_BYTES, gt=0, description="Image files larger than this are quarantined unread."
    )
    split: SplitFractions = Field(default_factory=SplitFractions)
    seed: int = DEFAULT_SEED
    gates: Gates = Field(default_factory=Gates)
    train: TrainDefaults = Field(default_factory=TrainDefaults)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    gc: GcSettings = Field(default_factory=GcSettings)
    io_workers: int = Field(default=4, description="Threads for image checks during ingest.")

    # MLflow and the registry
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default: SQLite store under STEELQC_HOME."
    )
    experiment: str = "steel-defects"
    registered_model: str = Field(
        default="steel-defect-classifier", description="One registered model per label space."
    )
    approval: Literal["auto", "manual"] = "auto"
    critical_recall_target: float = Field(default=0.95, description="Recall the critical threshold is calibrated to.")
    bootstrap_samples: int = 1000
    weights_fallback: Literal["none", "fail"] = Field(
        default="none", description="When ImageNet weights cannot be had: train from scratch (none) or fail."
    )
    lock_timeout_s: float = Field(default=120.0, description="How long to wait for the registry promotion lock.")

    # Faults and retries (README "Faults and retries"): the bounds of every client retry
    mlflow_http_retries: int = Field(
        default=4,
        ge=0,
        le=10,
        description="Retries of one MLflow HTTP call (refused or dropped connection, timeout, 5xx): waits 0, then "
        "2, 4, 8... times mlflow_http_backoff_s (+ up to 1 s) between tries (MLFLOW_HTTP_REQUEST_MAX_RETRIES).",
    )
    mlflow_http_backoff_s: int = Field(default=1, ge=0, le=30, description="MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.")
    mlflow_http_timeout_s: int = Field(
        default=60, ge=1, description="Seconds one MLflow HTTP try waits for the server (MLFLOW_HTTP_REQUEST_TIMEOUT)."
    )
    prefect_client_retries: int = Field(
        default=5,
        ge=0,
        le=8,
        description="Retries of one Prefect API call after a dropped connection, a timeout or a 502/503: waits 2, 4, "
        "8... s, +20 % at most (PREFECT_CLIENT_MAX_RETRIES).",
    )
    flow_heartbeat_s: int = Field(
        default=60, ge=30, description="Seconds between a flow run's heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY)."
    )
    zombie_after_s: int = Field(
        default=300,
        ge=31,
        description="A flow run without a heartbeat or an end state for this long is marked Crashed by the Prefect "
        "server's automation (flows/heartbeats.py); more than flow_heartbeat_s.",
    )

    # Servers, schedules, approval and alerts (README "Operations: servers, the nightly schedule, approval")
    server_host: str = Field(default="127.0.0.1", description="Where `steelqc server start` listens.")
    prefect_port: int = 4200
    mlflow_port: int = 5000
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL server (postgresql://user@host:port/db) for the servers: one database each "
        "(<database_prefix>_prefect, <database_prefix>_mlflow); default SQLite under STEELQC_HOME.",
    )
    database_prefix: str = "steelqc"
    mlflow_auth: bool = Field(
        default=False,
        description="`steelqc server start` runs MLflow with basic auth (--app-name basic-auth); admin "
        "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (infra/mlflow_auth.py).",
    )
    artifacts_destination: str | None = Field(
        default=None,
        description="Where the MLflow server of `steelqc server start` stores artifacts: a folder or "
        "s3://bucket/prefix (through s3_endpoint_url); default STEELQC_HOME/mlartifacts.",
    )
    approval_timeout_s: int = Field(default=86_400, description="How long a run waits for an ML lead's decision.")
    approval_poll_s: float = Field(default=5.0, description="How often a paused run checks for a decision.")
    timezone: str = Field(default="UTC", description="Time zone of the cron schedules (IANA name).")
    nightly_cron: str = "0 2 * * *"
    nightly_data: Path | None = Field(
        default=None, description="Folder the nightly retraining reads; default STEELQC_HOME/incoming."
    )
    data_sources: list[str] | None = Field(
        default=None,
        description="Sources the nightly retraining reads, NAME=DIR (or DIR) each, joined by class name "
        "(class_names gives the ids); default: nightly_data alone.",
    )
    alert_webhook_url: str | None = Field(
        default=None, description="POST alerts (failed run, failed gates, awaiting approval) as JSON here."
    )
    alert_block: str | None = Field(
        default=None, description="A saved Prefect notification block, 'type-slug/name' (Slack, Teams, e-mail...)."
    )

    # Drift monitoring (README "Drift monitoring"): `steelqc monitor` and the drift-monitor/hourly deployment
    monitor_inbox: str | None = Field(
        default=None,
        description="Where new factory images arrive: a folder or s3://bucket/prefix; default STEELQC_HOME/inbox.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 server for s3:// inboxes and review queues (MinIO, ...); default AWS."
    )
    monitoring_experiment: str = "steel-monitoring"
    decisions_dir: Path | None = Field(
        default=None,
        description="Decision log of `steelqc predict` (a JSONL file a UTC day); default STEELQC_HOME/decisions.",
    )
    monitor_min_images: int = Field(
        default=200, ge=1, description="Images to wait for before a drift decision (the drift rule is set for 200+)."
    )
    monitor_max_images: int = Field(default=5000, ge=1, description="Most images one monitoring run takes.")
    monitor_batch_size: int = Field(default=32, ge=1, description="Images per inference batch.")
    monitor_workers: int | None = Field(
        default=None,
        ge=0,
        description="Processes decoding images for the monitor's feature pass while the model scores the previous "
        "batch; default 1 on the CPU, all cores but one (at most 8) on CUDA; 0: in the monitor's process.",
    )
    drift: DriftRule = Field(default_factory=lambda: DriftRule())
    retrain_cooldown_s: int = Field(
        default=12 * 3600, ge=0, description="At most one drift-triggered retrain per this many seconds."
    )
    retrain_without_new_labels: bool = Field(
        default=False,
        description="Start the retrain on drift even when the nightly data is what the champion was trained on.",
    )
    review_dir: str | None = Field(
        default=None, description="The labelling queue: a folder or s3://bucket/prefix; default STEELQC_HOME/review."
    )
    review_least_confident: int = Field(default=10, ge=0, description="Least confident images queued per batch.")
    review_margin: float = Field(
        default=0.1, ge=0, description="Queue images whose critical probability is this close to the threshold."
    )
    review_near_threshold: int = Field(
        default=20, ge=0, description="Most images within review_margin of the threshold queued per batch (closest)."
    )
    review_novel: int = Field(default=50, ge=0, description="Most novel images queued per batch (most novel first).")
    review_drift_sample: int = Field(default=20, ge=0, description="Images of a drifted batch queued at random.")
    review_label_issues: int = Field(
        default=20,
        ge=0,
        description="Suspected label errors (cleanlab) among a training run's validation and test images queued per "
        "run; 0 turns it off.",
    )
    review_confident_mistakes: int = Field(
        default=10,
        ge=0,
        description="A training run's most confident mistakes on its validation and test images queued per run; "
        "0 turns it off.",
    )
    review_votes: int = Field(
        default=1, ge=1, description="Agreeing labels that move a queued image into the reviewed source."
    )
    shadow_max_images: int = Field(
        default=2000,
        ge=0,
        description="Newest reviewed images that challenger and champion score for the approval request (0: none).",
    )
    novelty_quantile: float = Field(
        default=0.99, gt=0.5, lt=1.0, description="Share of familiar validation images under the novelty threshold."
    )

    # Optuna
    optuna_storage: str | None = Field(
        default=None,
        description="sqlite:///..., postgresql://... or journal:PATH; default SQLite under STEELQC_HOME.",
    )
    tune_space: dict[str, dict[str, Any]] | None = Field(
        default=None, description="Search space overriding tasks.tune.DEFAULT_SPACE (name -> {type, ...})."
    )
    tune_epochs: int = Field(default=3, description="Epochs per tuning trial.")
    optuna_heartbeat_s: int = Field(default=OPTUNA_HEARTBEAT_S, description="Trial heartbeat (RDB storages).")
    optuna_grace_s: int = Field(
        default=OPTUNA_GRACE_S, description="A trial silent this long is failed (and retried once)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, init_settings))

    @model_validator(mode="after")
    def _check_heartbeats(self) -> Settings:
        if self.zombie_after_s <= self.flow_heartbeat_s:
            raise ValueError(
                f"zombie_after_s ({self.zombie_after_s}) must exceed flow_heartbeat_s ({self.flow_heartbeat_s}): "
                "a healthy run would be marked Crashed between two heartbeats"
            )
        return self

    @model_validator(mode="after")
    def _check_database_url(self) -> Settings:
        if self.database_url:
            database_for(self.database_url, self.database_prefix)  # raises on anything but postgresql://
        return self

    @model_validator(mode="after")
    def _check_classes(self) -> Settings:
        if self.class_names.get(0) is None:
            raise ValueError("class_names must define id 0 (the defect-free class)")
        names = list(self.class_names.values())
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        if self.critical_class not in names or self.critical_class == self.class_names[0]:
            raise ValueError(f"critical_class {self.critical_class!r} must be a defect class among {names[1:]}")
        if self.label_priority is not None:
            unknown = set(self.label_priority) - set(names)
            if unknown:
                raise ValueError(f"label_priority names unknown classes {sorted(unknown)}")
        return self

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of Severstal images."""
        return (self.image_height, self.image_width)

    @cached_property
    def class_ids(self) -> dict[str, int]:
        """Class name -> id."""
        return {name: cid for cid, name in self.class_names.items()}

    def priority_ids(self) -> list[int]:
        """Defect class ids in label-priority order (critical first unless configured otherwise)."""
        return label_priority_ids(self.class_names, self.critical_class, self.label_priority)

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def mlflow_uri(self) -> str:
        """The tracking URI: the setting, else the MLflow database of ``database_url``, else SQLite under ``home``."""
        if self.tracking_uri:
            return self.tracking_uri
        if self.database_url:
            return database_for(self.database_url, f"{self.database_prefix}_mlflow", "psycopg")
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def incoming_dir(self) -> Path:
        """Where the nightly retraining reads its data."""
        return self.nightly_data or self.home / "incoming"

    @property
    def nightly_sources(self) -> list[str]:
        """The nightly retraining's data sources (``NAME=DIR`` or ``DIR`` each): ``data_sources``, else the
        ``incoming_dir`` alone; plus ``reviewed=<reviewed_dir>`` when it holds an image and no source names it."""
        sources = list(self.data_sources) if self.data_sources else [str(self.incoming_dir.resolve())]
        return (
            [*sources, f"{REVIEWED_SOURCE}={self.reviewed_dir.resolve()}"]
            if self._reviewed_is_new(sources)
            else sources
        )

    def resolve_data(self, data: str | list[str]) -> str | list[str]:
        """``data`` as given, or for :data:`NIGHTLY_DATA` the nightly sources as of now: the one folder as before, or
        the list of sources (``NAME=DIR`` each)."""
        if data != NIGHTLY_DATA:
            return data
        sources = self.nightly_sources
        return sources[0] if len(sources) == 1 and not self.data_sources else sources

    @property
    def reviewed_dir(self) -> Path:
        """The ``reviewed`` data source: images labelled through `steelqc review`, one folder a class."""
        return self.home / REVIEWED_SOURCE

    def _reviewed_is_new(self, sources: list[str]) -> bool:
        """Whether the nightly run should add the ``reviewed`` source: it holds an image and no source names it."""
        folder = self.reviewed_dir.resolve()
        named = any(
            s.partition("=")[0] == REVIEWED_SOURCE or Path(s.partition("=")[2] or s).resolve() == folder
            for s in sources
        )
        holds = folder.is_dir() and any(
            f.is_file() and not f.name.startswith(".") for c in folder.iterdir() if c.is_dir() for f in c.iterdir()
        )
        return holds and not named

    @property
    def inbox(self) -> str:
        """Where new factory images arrive (a folder or an s3:// prefix)."""
        return self.monitor_inbox or str(self.home / "inbox")

    @property
    def review_queue(self) -> str:
        """The labelling queue (a folder or an s3:// prefix)."""
        return self.review_dir or str(self.home / "review")

    @property
    def artifact_root(self) -> Path:
        """Where a local store keeps artifacts (ignored by a remote tracking server)."""
        return (self.home / "mlartifacts").resolve()


def database_for(base_url: str, database: str, driver: str | None = None) -> str:
    """``base_url`` (``postgresql://user@host:port/any``) pointed at ``database``, with an optional driver."""
    parts = urlsplit(base_url)
    scheme = parts.scheme.split("+")[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"database_url must be a postgresql:// URL, got scheme {parts.scheme!r}")
    scheme = "postgresql" + (f"+{driver}" if driver else "")
    return urlunsplit((scheme, parts.netloc, f"/{database}", parts.query, ""))


def mask_url(url: str) -> str:
    """A storage or database URL with its password masked."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def label_priority_ids(
    class_names: dict[int, str], critical_class: str, priority: list[str] | None = None
) -> list[int]:
    """Defect ids ordered by priority: the given names first, then critical, then the rest by id."""
    ids = {name: cid for cid, name in class_names.items()}
    defect_ids = sorted(cid for cid in class_names if cid != 0)
    ordered = [ids[n] for n in (priority or []) if ids.get(n, 0) != 0]
    if ids[critical_class] not in ordered:
        ordered.append(ids[critical_class])
    ordered += [cid for cid in defect_ids if cid not in ordered]
    return ordered


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by the `config` init argument or ``STEELQC_CONFIG``."""

    def __init__(self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._init = init_settings

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self._init().get("config") or os.environ.get("STEELQC_CONFIG")
        if not path:
            return {}
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"settings file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"settings file {path} must hold a mapping at its top level")
        return data


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional YAML file, the environment and explicit overrides."""
    if config is not None:
        overrides["config"] = Path(config)
    return Settings(**overrides)
