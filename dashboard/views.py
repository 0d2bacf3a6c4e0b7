"""The dashboard's pages (Streamlit): *Inspect*, *Models*, *Review* and *Monitoring*.

Every page reads the registry and loaded models only: nothing here trains, so no page waits on a training run.
*Review* writes labels into the review queue, through :mod:`steelqc.dashboard.review` (the CLI's labelling code).
Settings come from the environment (``STEELQC_*``, as every command reads them); models load with
:func:`steelqc.model_registry.packaging.load` (weights only, hashes checked), once per version
(``st.cache_resource``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from streamlit.navigation.page import StreamlitPage

from steelqc.dashboard import catalog, drift, review
from steelqc.dashboard.inspection import Inspection, folder_images, inspect_image
from steelqc.model_registry import card, packaging, promotion
from steelqc.model_registry.packaging import SteelDefectModel, UnsafeModel
from steelqc.model_registry.store import client, configure
from steelqc.monitoring.review_labels import LabelDesk, LabelError
from steelqc.tasks.config import Settings, mask_url
from steelqc.tasks.data.imageio import read_regular_file

log = logging.getLogger(__name__)

UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"]


@st.cache_resource(show_spinner=False)
def registry() -> tuple[Settings, MlflowClient]:
    """The settings (from the environment) and a registry client, MLflow configured once per process."""
    settings = Settings()
    configure(settings)
    return settings, client(settings)


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def load_model(uri: str) -> SteelDefectModel:
    """A version loaded once (``uri`` pinned: ``models:/name/N``, so a moved alias loads the new version)."""
    return packaging.load(uri, device="cpu")


def navigation() -> StreamlitPage:
    """The pages, in the sidebar."""
    return st.navigation(
        [
            st.Page(inspect_page, title="Inspect", url_path="inspect", default=True),
            st.Page(models_page, title="Models", url_path="models"),
            st.Page(review_page, title="Review", url_path="review"),
            st.Page(monitoring_page, title="Monitoring", url_path="monitoring"),
        ]
    )


# ------------------------------------------------------------------------------------------------ Inspect


def _version_choice(settings: Settings, mlflow_client: MlflowClient) -> str | None:
    """The version to decide with: a selectbox of registered versions, the champion's by default."""
    rows = catalog.versions(mlflow_client, settings.registered_model)
    if not rows:
        st.info(f"No version of {settings.registered_model} is registered yet (train one: `steelqc train`).")
        return None
    labels = {r.version: f"version {r.version}" + (f" ({', '.join(r.aliases)})" if r.aliases else "") for r in rows}
    champion = next((r.version for r in rows if promotion.CHAMPION in r.aliases), None)
    if champion is None:
        st.warning("No version holds the champion alias; pick a version to inspect with.")
    order = [r.version for r in rows]
    index = order.index(champion) if champion is not None else 0
    return st.sidebar.selectbox("Model version", order, index=index, format_func=labels.__getitem__)


def _image_source(max_bytes: int) -> tuple[str, bytes] | None:
    """The image to inspect: an upload, or one picked from a folder on the dashboard's machine (a regular file,
    read up to ``max_bytes`` + 1 bytes: a larger one is refused before decoding)."""
    upload_tab, folder_tab = st.tabs(["Upload", "From a folder"])
    with upload_tab:
        uploaded = st.file_uploader("Image of a steel surface", type=UPLOAD_TYPES)
    with folder_tab:
        folder = st.text_input("Folder on the dashboard's machine", value="")
        images = folder_images(folder) if folder else []
        if folder and not images:
            st.caption("No images in that folder.")
        picked = st.selectbox("Image", images, format_func=lambda p: p.name, index=None) if images else None
    if uploaded is not None:
        return uploaded.name, uploaded.getvalue()
    if picked is not None:
        return str(picked), read_regular_file(picked, max_bytes)
    return None


def _show(result: Inspection, name: str, version: str, model_name: str) -> None:
    """The decision, its probabilities and threshold, and the Grad-CAM overlay."""
    verdict = "CRITICAL" if result.critical else "not critical"
    st.subheader(f"Predicted: {result.label}")
    st.markdown(
        f"**{verdict}**: P({result.critical_class}) = {result.critical_probability:.3f}, "
        + (
            f"threshold {result.threshold:.3f} (critical when P >= threshold, else the most probable other class)"
            if result.threshold is not None
            else "no calibrated threshold (plain argmax)"
        )
    )
    st.markdown(f"Decided by **{model_name} version {version}** for `{name}`.")
    st.table([{"class": c, "probability": f"{p:.4f}"} for c, p in result.probabilities.items()], hide_index=True)
    st.image(result.image, caption="Image", width="stretch", alt="Inspected image")
    st.image(result.overlay, caption=f"Grad-CAM overlay ({result.label})", width="stretch", alt="Grad-CAM overlay")


def inspect_page() -> None:
    """Upload or pick an image; see how the chosen version decides it and where it looked."""
    st.title("Inspect an image")
    settings, mlflow_client = registry()
    version = _version_choice(settings, mlflow_client)
    source = _image_source(settings.max_image_bytes)
    if version is None or source is None:
        return
    uri = catalog.version_uri(settings.registered_model, version)
    try:
        model = load_model(uri)
    except (UnsafeModel, MlflowException, OSError, ValueError) as exc:
        st.error(f"Cannot load {uri}: {exc}")
        return
    name, data = source
    if len(data) > settings.max_image_bytes:
        st.error(f"{name} is larger than {settings.max_image_bytes} bytes (STEELQC_MAX_IMAGE_BYTES).")
        return
    try:
        result = inspect_image(model, data)
    except (OSError, ValueError) as exc:  # not an image, truncated, too large...
        st.error(f"Cannot read {name}: {exc}")
        return
    _show(result, name, version, settings.registered_model)


# ------------------------------------------------------------------------------------------------- Models


def models_page() -> None:
    """Registered versions with their aliases and gates, and the audit trail."""
    st.title("Models")
    settings, mlflow_client = registry()
    name = settings.registered_model
    rows = catalog.versions(mlflow_client, name)
    st.caption(f"Registered model {name} in {mask_url(settings.mlflow_uri)}")
    if not rows:
        st.info(f"No version of {name} is registered yet.")
        return
    aliases = promotion.aliases(mlflow_client, name)
    st.markdown("  ".join(f"**{alias}**: version {version}" for alias, version in sorted(aliases.items())) or "")
    st.subheader("Versions")
    st.table([r.summary() for r in rows], hide_index=True)
    st.subheader("Gate results")
    for row in rows:
        label = f"version {row.version}: gates {row.summary()['gates']}"
        with st.expander(label, expanded=bool(row.aliases)):
            if row.gates_reason:
                st.markdown(f"Verdict: {row.gates_reason}")
            gates = catalog.gate_rows(row.gates)
            if gates:
                st.table(gates, hide_index=True)
            else:
                st.caption("No gate table in this version's tags.")
    _model_card(mlflow_client, name, rows, aliases)
    st.subheader("Audit trail")
    audit = catalog.audit_rows(mlflow_client, name)
    if audit:
        st.table(audit, hide_index=True)
    else:
        st.caption("No audit events yet.")


def _model_card(mlflow_client: MlflowClient, name: str, rows: list[catalog.VersionRow], aliases: dict) -> None:
    """A chosen version's model card (the champion's first), as the registry holds it."""
    st.subheader("Model card")
    versions = [r.version for r in rows]
    champion = aliases.get(promotion.CHAMPION)
    start = versions.index(champion) if champion in versions else 0
    chosen = st.selectbox("Card of version", versions, index=start, key="card_version")
    text = card.read_card(mlflow_client, name, chosen) if chosen is not None else None
    if text is None:
        st.caption(f"Version {chosen} has no model card (versions registered before cards existed).")
        return
    with st.container(border=True):
        st.markdown(text)


# ------------------------------------------------------------------------------------------------- Review

REVIEWER_KEY, OUTCOME_KEY = "review_reviewer", "review_outcome"


def _label_clicked(settings: Settings, sha256: str, label: str) -> None:
    """A class button's callback (runs before the page reruns): label through the CLI's own labelling code and
    keep the outcome for the next run of the page."""
    try:
        desk = review.open_desk(settings)
        outcome = review.label(desk, sha256, label, st.session_state.get(REVIEWER_KEY))
    except (LabelError, OSError) as exc:
        st.session_state[OUTCOME_KEY] = ("error", f"Not labelled: {exc}")
        return
    kind = {"reviewed": "success", "disputed": "warning"}.get(outcome.status, "info")
    st.session_state[OUTCOME_KEY] = (kind, outcome.message)


def _review_image(settings: Settings, entry: dict, classes: list[str], key: str) -> None:
    """One queued image: the image, why it was queued, the model's guess, and one button per class."""
    sha = str(entry["sha256"])
    st.markdown(f"`{sha[:12]}` from `{entry.get('source_uri')}`")
    st.caption(review.describe(entry))
    data = review.image_bytes(entry, settings.max_image_bytes)
    if data is None:
        st.warning(f"The queued image {entry.get('image')} cannot be read.")
    else:
        st.image(data, caption=f"Queued image {sha[:12]}", width="stretch", alt="Queued image")
    guess = review.guess(entry)
    if guess:
        st.table([{"": k, "value": v} for k, v in guess.items()], hide_index=True)
    for column, name in zip(st.columns(len(classes)), classes, strict=True):
        column.button(name, key=f"{key}-{sha}-{name}", on_click=_label_clicked, args=(settings, sha, name),
                      width="stretch")  # fmt: skip


def review_page() -> None:
    """The review queue: one image at a time with the model's guess, labelled with one click; disputed apart."""
    st.title("Review")
    settings = Settings()
    try:
        desk: LabelDesk = review.open_desk(settings)
    except LabelError as exc:
        st.error(str(exc))
        return
    if REVIEWER_KEY not in st.session_state:
        st.session_state[REVIEWER_KEY] = review.reviewer_name(None)
    reviewer = st.sidebar.text_input("Reviewer", key=REVIEWER_KEY)
    view = review.queue_view(desk, reviewer)
    queued, disputed, reviewed = st.columns(3)
    queued.metric("Queued", view.counts["queued"])
    disputed.metric("Disputed", view.counts["disputed"])
    reviewed.metric("Reviewed", view.counts["reviewed"])
    st.caption(f"Queue {desk.root}; labelled images go to {desk.reviewed}/<class>/")
    if OUTCOME_KEY in st.session_state:
        kind, message = st.session_state.pop(OUTCOME_KEY)
        getattr(st, kind)(message)
    classes = review.class_choices(settings)
    current = view.current
    if current is None:
        st.info("Nothing waits for your label: the drift monitor (`steelqc monitor`) queues images here.")
    else:
        st.subheader(f"Next image ({len(view.pending)} waiting for you)")
        _review_image(settings, current, classes, "next")
    if view.disputed:
        st.subheader("Disputed")
        for entry in view.disputed:
            with st.expander(review.describe(entry)):
                _review_image(settings, entry, classes, "disputed")


def monitoring_page() -> None:
    """The drift monitor's recent decisions with their figures, and a run's Evidently report."""
    st.title("Monitoring")
    settings, mlflow_client = registry()
    rows = drift.decisions(settings)
    if not rows:
        st.info("No monitoring run yet: `steelqc monitor` (or the scheduled drift-monitor) records them here.")
        return
    st.subheader("Recent drift decisions")
    st.table(rows, hide_index=True)
    choice = st.selectbox("Evidently report of the run", [r["monitoring_run_id"] for r in rows], index=0)
    with tempfile.TemporaryDirectory(prefix="steelqc-report-") as tmp:
        html = drift.report_html(mlflow_client, choice, Path(tmp)) if choice else None
    if html is None:
        st.caption("This run logged no drift report (no usable image, or nothing new).")
    else:
        st.download_button("Download the report", html, file_name=f"drift_report_{choice}.html", mime="text/html")
        components.html(html, height=900, scrolling=True)
    _live_figures(settings, rows)


def _live_figures(settings, rows: list[dict]) -> None:
    """The champion's live precision and recall from the reviewed labels, and the criticals it missed."""
    live = drift.live_table(settings, rows)
    st.subheader(f"Live precision and recall of version {live['model_version']} (reviewed labels)")
    if not live["n_reviewed"]:
        st.caption("No reviewed image of this version yet: `steelqc review label` or the Review page.")
        return
    st.caption(f"{live['n_reviewed']} reviewed images; support: reviewed as the class; predicted: the model's guess")
    st.table(live["table"], hide_index=True)
    if live["missed_critical"]:
        st.warning(
            f"{len(live['missed_critical'])} reviewed {settings.critical_class} the model filed as another class"
        )
        st.table(live["missed_critical"], hide_index=True)
