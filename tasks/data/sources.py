"""Several data sources (plants, lines, steel types) in one training run, joined by class name.

A source is ``NAME=DIR`` or a bare ``DIR`` (named after its folder), in any layout ingest reads (Severstal CSV +
images or class folders, detected per source). One source is ingested exactly as a lone data folder always was
(folder classes numbered alphabetically, Severstal by ClassId). Several sources are joined by class name with the
ids of the settings' class map (``class_names``), so the same name always means the same class; a class folder the
settings do not know is an :class:`~steelqc.tasks.data.ingest.IngestError`. Each manifest row keeps its ``source``;
with several sources image ids become ``NAME/<id>`` (two plants may both have ``0001.jpg``), so the fingerprint
covers every source's images.

**The relabel rule.** An image people reviewed (`steelqc review`) sits in the ``reviewed`` source under the class
they gave it, and may still sit in its old source under the old label. When several sources are joined, a row of
another source whose content hash (``sha256``) is in the ``reviewed`` source is dropped, with its masks: the
reviewed row wins (:func:`apply_review_labels`). Each dropped row is logged and kept in the result's
``replaced_by_review`` (the summary's ``relabelled_by_review`` and ``confirmed_by_review``). Splits stay put: the
split ledger is keyed by content hash.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from steelqc.tasks.config import REVIEWED_SOURCE, Settings
from steelqc.tasks.data.ingest import (
    Format,
    IngestError,
    IngestResult,
    check_out_dir,
    ingest,
    ingest_layout,
    new_run_dir,
    source_name_of,
    with_channels,
    with_source,
    write_outputs,
)

log = logging.getLogger(__name__)

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""A source name: letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit."""


@dataclass(frozen=True)
class DataSource:
    """One data source: its ``name`` (the manifest's ``source``) and its folder."""

    name: str
    path: Path

    def spec(self) -> str:
        """``NAME=DIR``, the form ``--data`` and the ``data_sources`` setting take."""
        return f"{self.name}={self.path}"


def parse_source(spec: str) -> DataSource:
    """``NAME=DIR`` or a bare ``DIR`` (named after its folder, :func:`source_name_of`).

    A spec whose part before ``=`` is not a valid name is a bare folder when that folder exists (``/data/a=b``),
    else an :class:`IngestError` saying what is wrong.
    """
    text = str(spec).strip()
    if not text:
        raise IngestError("empty data source: give DIR or NAME=DIR")
    name, sep, path = text.partition("=")
    if sep and SOURCE_NAME.match(name):
        if not path.strip():
            raise IngestError(f"data source {text!r} names no folder: give NAME=DIR")
        return DataSource(name, Path(path.strip()))
    if sep and not Path(text).exists():
        raise IngestError(
            f"data source {text!r}: {name!r} is not a source name (letters, digits, '_', '.', '-', starting with a "
            "letter or digit) and no folder of that whole name exists"
        )
    return DataSource(source_name_of(text), Path(text))


def parse_sources(specs: str | Sequence[str]) -> list[DataSource]:
    """Every ``--data`` value as a :class:`DataSource`; two sources with one name, or one folder twice, are an
    :class:`IngestError`."""
    sources = [parse_source(s) for s in ([specs] if isinstance(specs, str) else list(specs))]
    if not sources:
        raise IngestError("no data source given: --data DIR or --data NAME=DIR (repeatable)")
    seen: dict[str, DataSource] = {}
    folders: dict[Path, DataSource] = {}
    for source in sources:
        if source.name in seen:
            raise IngestError(
                f"source name {source.name!r} given twice ({seen[source.name].path} and {source.path}): "
                "name them with NAME=DIR"
            )
        folder = source.path.resolve()
        if folder in folders:
            raise IngestError(f"folder {source.path} given twice (sources {folders[folder].name!r}, {source.name!r})")
        seen[source.name], folders[folder] = source, source
    return sources


def class_id_map(class_names: dict[int, str], settings: Settings, source: str) -> dict[int, int]:
    """Each id of a source's class map -> the settings' id of the same class name.

    A folder named ``ok`` (any case) is the defect-free class (id 0); any other name must be one of the settings'
    classes, else an :class:`IngestError` names the source, the class and the classes the settings know.
    """
    known = settings.class_ids
    mapping: dict[int, int] = {}
    for cid, name in sorted(class_names.items()):
        if name in known:
            mapping[cid] = known[name]
        elif name.lower() == "ok" or (cid == 0 and name.lower() == settings.class_names[0].lower()):
            mapping[cid] = 0
        else:
            raise IngestError(
                f"source {source!r}: class {name!r} is not in the settings' class map "
                f"({', '.join(n for _, n in sorted(settings.class_names.items()))}); add it to class_names "
                "or rename the folder"
            )
    return mapping


def join_classes(result: IngestResult, settings: Settings, source: str) -> IngestResult:
    """``result`` with the settings' class ids and names (labels, ``classes``, ``label_name``, masks)."""
    mapping = class_id_map(result.class_names, settings, source)
    names = settings.class_names
    manifest = result.manifest.copy()
    manifest["label"] = manifest["label"].map(mapping).astype(int)
    manifest["label_name"] = manifest["label"].map(names)
    manifest["classes"] = manifest["classes"].map(lambda c: " ".join(str(mapping[int(x)]) for x in str(c).split()))
    masks = result.masks.copy()
    masks["class_id"] = masks["class_id"].map(lambda c: mapping[int(c)])
    class_names = {mapping[cid]: names[mapping[cid]] for cid in result.class_names}
    return replace(result, manifest=manifest, masks=masks, class_names=class_names)


def _prefixed(result: IngestResult, name: str) -> IngestResult:
    """Image ids (manifest, masks, quarantine) prefixed with ``NAME/``, unique across sources."""
    manifest, masks = result.manifest.copy(), result.masks.copy()
    manifest["image_id"] = name + "/" + manifest["image_id"].astype(str)
    masks["image_id"] = name + "/" + masks["image_id"].astype(str)
    quarantine = [replace(q, image_id=f"{name}/{q.image_id}" if q.image_id else None) for q in result.quarantine]
    return replace(result, manifest=manifest, masks=masks, quarantine=quarantine)


def _joined(parts: list[IngestResult], settings: Settings, critical: str) -> IngestResult:
    """One result of several sources' (already joined and prefixed) results."""
    class_names = dict(sorted({cid: n for part in parts for cid, n in part.class_names.items()}.items()))
    defects = [n for cid, n in class_names.items() if cid != 0]
    if critical not in defects:
        raise IngestError(
            f"critical class {critical!r} is in none of the sources (defect classes found: {', '.join(defects)})"
        )
    manifest = pd.concat([p.manifest for p in parts], ignore_index=True)
    pixels = [c for c in manifest.columns if c.startswith("pixels_")]
    manifest[pixels] = manifest[pixels].fillna(0).astype(int)  # class folders carry no masks: 0 pixels known
    front = [c for c in parts[0].manifest.columns if c in manifest.columns and not c.startswith("pixels_")]
    manifest = manifest[[*front, *sorted(pixels), *(c for c in manifest.columns if c not in front + pixels)]]
    formats = sorted({p.format for p in parts})
    return IngestResult(
        source=parts[0].source,
        format=formats[0] if len(formats) == 1 else "mixed",
        class_names=class_names,
        critical_class=critical,
        manifest=manifest,
        masks=pd.concat([p.masks for p in parts], ignore_index=True),
        quarantine=[q for p in parts for q in p.quarantine],
        rows_read=sum(p.rows_read for p in parts),
        sources={name: entry for p in parts for name, entry in p.sources.items()},
    )


def is_reviewed_source(source: DataSource, settings: Settings) -> bool:
    """Whether ``source`` is the ``reviewed`` source: named so, or the settings' ``reviewed_dir``."""
    return source.name == REVIEWED_SOURCE or source.path.resolve() == settings.reviewed_dir.resolve()


def apply_review_labels(parts: list[IngestResult], reviewed: str) -> tuple[list[IngestResult], list[dict]]:
    """``parts`` (joined and prefixed, one a source) without the rows of other sources whose image (``sha256``) is in
    source ``reviewed``, nor their masks; and one record per dropped row: ``image_id``, ``source``, ``sha256``,
    ``from`` (its label), ``to`` (the reviewed label), ``reviewed_image_id``. Without that source, as given."""
    review = next((p for p in parts if reviewed in p.sources), None)
    if review is None or review.manifest.empty:
        return parts, []
    by_sha = review.manifest.drop_duplicates("sha256").set_index("sha256")
    out, replaced = [], []
    for part in parts:
        manifest = part.manifest
        dropped = manifest["sha256"].isin(by_sha.index)
        if part is review or not dropped.any():
            out.append(part)
            continue
        for row in manifest[dropped].itertuples(index=False):
            reviewed_row = by_sha.loc[row.sha256]
            replaced.append({
                "image_id": str(row.image_id), "source": str(row.source), "sha256": str(row.sha256),
                "from": str(row.label_name), "to": str(reviewed_row["label_name"]),
                "reviewed_image_id": str(reviewed_row["image_id"]),
            })  # fmt: skip
        gone = set(manifest.loc[dropped, "image_id"])
        masks = part.masks[~part.masks["image_id"].isin(gone)].reset_index(drop=True)
        out.append(replace(part, manifest=manifest[~dropped].reset_index(drop=True), masks=masks))
    relabelled = [r for r in replaced if r["from"] != r["to"]]
    if replaced:
        log.warning(
            "the %s source holds %d images of other sources: their rows are dropped, the reviewed label wins "
            "(%d relabelled%s; %d confirmed)",
            reviewed, len(replaced), len(relabelled),
            ": " + ", ".join(f"{r['image_id']} {r['from']} -> {r['to']}" for r in relabelled) if relabelled else "",
            len(replaced) - len(relabelled),
        )  # fmt: skip
    return out, replaced


def ingest_sources(
    sources: Sequence[DataSource], settings: Settings, fmt: Format = "auto", critical_class: str | None = None
) -> IngestResult:
    """Validate every source and join them, the ``reviewed`` source's labels winning (module docstring); one source
    is ingested exactly as a lone folder."""
    if len(sources) == 1:
        return ingest(sources[0].path, settings, fmt, critical_class, source=sources[0].name)
    critical = critical_class or settings.critical_class
    parts = []
    for source in sources:
        part = ingest_layout(source.path, settings, fmt, critical, require_critical=False)
        part = _prefixed(join_classes(with_source(part, source.name), settings, source.name), source.name)
        log.info("source %s (%s, %s): %d valid images", source.name, source.path, part.format, len(part.manifest))
        parts.append(part)
    reviewed = next((s.name for s in sources if is_reviewed_source(s, settings)), None)
    parts, replaced = apply_review_labels(parts, reviewed) if reviewed is not None else (parts, [])
    return replace(with_channels(_joined(parts, settings, critical)), replaced_by_review=replaced)


def sources_to_folder(
    sources: Sequence[DataSource],
    settings: Settings,
    fmt: Format = "auto",
    critical_class: str | None = None,
    out: Path | None = None,
    prefix: str = "ingest",
    require_valid: bool = False,
) -> tuple[IngestResult, dict]:
    """Validate and join ``sources`` and write manifest, masks, quarantine and ``ingest.json`` into ``out`` (default:
    a new run folder); an output folder inside a source is refused, and so, with ``require_valid``, is data without
    one valid image (then nothing is written)."""
    for source in sources:
        check_out_dir(out if out is not None else settings.runs_dir, source.path)
    result = ingest_sources(sources, settings, fmt, critical_class)
    if require_valid and result.manifest.empty:
        names = ", ".join(s.spec() for s in sources)
        raise IngestError(f"no valid image in {names}; nothing to train on")
    return result, write_outputs(result, out if out is not None else new_run_dir(settings, prefix))
