"""Corpora -> one manifest (``manifest.parquet``), the only thing later stages read about data.

Manifest contract (one row per clip):

==============  ==================  ==================================================
column          type                meaning
==============  ==================  ==================================================
``clip_id``     string (unique)     relative audio path without extension, ``/``-joined
``split``       string              ``train`` / ``val`` / ``test``
``audio_path``  string              path relative to the corpus root, ``/``-joined
``captions``    list<string> (>=1)  reference captions, whitespace-stripped, non-empty
``duration_s``  double              from the audio header (seconds)
==============  ==================  ==================================================

Schema metadata: ``clapart.root`` (corpus root), ``clapart.source`` and ``clapart.report``
(JSON :class:`CorpusReport`: missing/unreadable/unlisted files, dropped captions). In memory
the root is a path usable from the current directory; :func:`write_manifest` stores a
relative root relative to the manifest's own folder (so the file keeps working in a copied
repository such as a ``dvc exp run`` workspace) and an absolute root as is;
:func:`read_manifest` turns it back into a usable path.

Audio paths never leave the root: :func:`resolve_audio_path` refuses absolute paths and ``..``.

The ``folder`` source is ``{root}/train.csv`` (required), ``val.csv``, ``test.csv`` (optional)
with columns ``file_name, caption_1..caption_N`` (Clotho style, ``file_name`` relative to the
root). ``demo`` writes :mod:`clapart_core.demo_corpus` into the root and reads it as a folder.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clapart_core.audio import AudioDecodeError, audio_info
from clapart_core.demo_corpus import generate_demo_corpus

__all__ = [
    "AUDIO_EXTENSIONS",
    "MANIFEST_SCHEMA",
    "REPORT_KEY",
    "ROOT_KEY",
    "SOURCE_KEY",
    "SPLITS",
    "SUPPORTED_SOURCES",
    "CorpusReport",
    "ManifestError",
    "build_manifest",
    "corpus_report",
    "read_folder_corpus",
    "read_manifest",
    "resolve_audio_path",
    "scan_folder_corpus",
    "validate_manifest",
    "write_manifest",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
SUPPORTED_SOURCES: tuple[str, ...] = ("demo", "folder")
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".opus"})
ROOT_KEY = b"clapart.root"
SOURCE_KEY = b"clapart.source"
REPORT_KEY = b"clapart.report"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("audio_path", pa.string(), nullable=False),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
    ]
)

_CAPTION_COL = re.compile(r"caption_(\d+)")
_MAX_EXAMPLES = 50  # file names kept per problem list in the stored report


class ManifestError(ValueError):
    """A corpus or manifest is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class CorpusReport:
    """What reading a corpus found besides the clips it kept.

    Paths are relative to the corpus root. ``missing_audio`` / ``unreadable_audio`` rows are
    left out of the manifest; ``unlisted_audio`` are audio files under the root that no CSV names.
    """

    root: str
    n_clips: int
    clips_per_split: dict[str, int]
    missing_splits: tuple[str, ...] = ()
    missing_audio: tuple[str, ...] = ()
    unreadable_audio: tuple[str, ...] = ()  # "rel/path.wav (reason)"
    unlisted_audio: tuple[str, ...] = ()
    dropped_empty_captions: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every listed file was usable and every audio file was listed."""
        return not (self.missing_audio or self.unreadable_audio or self.unlisted_audio)

    def summary(self) -> str:
        """One human-readable line."""
        parts = [f"{self.n_clips} clips " + ", ".join(f"{k}={v}" for k, v in self.clips_per_split.items())]
        if self.missing_splits:
            parts.append("no CSV for split(s) " + ", ".join(self.missing_splits))
        for name, items in (
            ("missing audio", self.missing_audio),
            ("unreadable audio", self.unreadable_audio),
            ("unlisted audio", self.unlisted_audio),
        ):
            if items:
                parts.append(f"{len(items)} {name} (e.g. {', '.join(items[:3])})")
        if self.dropped_empty_captions:
            parts.append(f"{self.dropped_empty_captions} empty captions dropped")
        return f"{self.root}: " + "; ".join(parts)

    def to_dict(self, max_examples: int = _MAX_EXAMPLES) -> dict[str, Any]:
        """JSON-ready dict; problem lists are cut to ``max_examples`` with their full counts."""
        # No root here: the manifest stores it under ROOT_KEY, rewritten relative to the file.
        out: dict[str, Any] = {
            "n_clips": self.n_clips,
            "clips_per_split": dict(self.clips_per_split),
            "missing_splits": list(self.missing_splits),
            "dropped_empty_captions": self.dropped_empty_captions,
        }
        for name in ("missing_audio", "unreadable_audio", "unlisted_audio"):
            items = getattr(self, name)
            out[f"n_{name}"] = len(items)
            out[name] = list(items[:max_examples])
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------------------------
# Paths


def _check_relative(rel: str, where: str) -> str:
    """Normalise a ``/``-separated relative path; raise if it is empty, absolute or uses ``..``."""
    text = rel.strip()
    pp = PurePosixPath(text)
    if not text or str(pp) == ".":
        raise ManifestError(f"{where}: empty audio path")
    if pp.is_absolute() or PureWindowsPath(text).drive or ".." in pp.parts:
        raise ManifestError(f"{where}: audio path {rel!r} escapes the corpus root (absolute or '..')")
    return pp.as_posix()


def resolve_audio_path(root: str | Path, rel: str) -> Path:
    """``root / rel`` for a manifest ``audio_path``; refuses paths that escape the root.

    The check is lexical (absolute paths, drive letters and ``..`` components are refused), so
    a root that is itself a symlink into a data disk still works.
    """
    return Path(root) / _check_relative(rel, f"corpus root {root}")


# --------------------------------------------------------------------------------------------
# Folder corpus


@dataclass(frozen=True)
class _Row:
    clip_id: str
    split: str
    audio_path: str
    captions: tuple[str, ...]
    where: str  # "train.csv line 7" for error messages


def _read_split_csv(csv_path: Path, split: str) -> tuple[list[_Row], int]:
    """Parse one captions CSV; returns its rows and the number of empty captions dropped."""
    rows: list[_Row] = []
    dropped = 0
    try:
        fh = open(csv_path, encoding="utf-8-sig", newline="")
    except OSError as err:
        raise ManifestError(f"{csv_path}: cannot open captions CSV ({err.strerror})") from err
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ManifestError(f"{csv_path}: empty CSV, expected a header row") from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise ManifestError(f"{csv_path}: not a readable UTF-8 CSV ({err})") from err
        if "file_name" not in header:
            raise ManifestError(f"{csv_path}: missing column 'file_name'")
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise ManifestError(f"{csv_path}: duplicate column(s) {', '.join(dup)}")
        cap_cols = sorted(
            ((int(m.group(1)), i) for i, h in enumerate(header) if (m := _CAPTION_COL.fullmatch(h))),
        )
        if not cap_cols:
            raise ManifestError(f"{csv_path}: missing column 'caption_1' (no caption_N columns)")
        name_col = header.index("file_name")
        try:
            for row in reader:
                where = f"{csv_path} line {reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise ManifestError(f"{where}: {len(row)} fields, header has {len(header)}")
                rel = _check_relative(row[name_col], where)
                caps = tuple(c for _, i in cap_cols if (c := " ".join(row[i].split())))
                dropped += len(cap_cols) - len(caps)
                if not caps:
                    raise ManifestError(f"{where}: clip {rel!r} has no non-empty caption")
                clip_id = str(PurePosixPath(rel).with_suffix(""))
                rows.append(_Row(clip_id, split, rel, caps, where))
        except (csv.Error, UnicodeDecodeError) as err:
            raise ManifestError(f"{csv_path}: not a readable UTF-8 CSV ({err})") from err
    return rows, dropped


def _audio_files_under(root: Path) -> list[str]:
    """All audio files below ``root`` (hidden folders/files skipped), as sorted relative paths."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                found.append((base / name).as_posix())
    return sorted(found)


def _examples(items: list[str] | tuple[str, ...]) -> str:
    head = ", ".join(items[:5])
    return head + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def scan_folder_corpus(root: str | Path, *, strict: bool = False) -> tuple[pa.Table, CorpusReport]:
    """Read a ``folder`` corpus into a manifest table plus a report of what was left out.

    Args:
        root: folder holding ``train.csv`` (required), ``val.csv`` / ``test.csv`` (optional)
            and the audio files they name (``file_name`` relative to ``root``).
        strict: make missing, unreadable and unlisted audio files errors instead of reported
            omissions (use it to fail before a long stage).

    Returns:
        ``(table, report)``; the table follows :data:`MANIFEST_SCHEMA` with the root, source
        ``"folder"`` and the report in its schema metadata. Clips whose audio is missing or
        unreadable are left out (and listed in the report).

    Raises:
        ManifestError: missing ``train.csv``, a bad CSV (missing column, ragged row, path
            escaping the root, clip without captions), duplicate clip ids, or in ``strict``
            mode any missing/unreadable/unlisted audio file.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: corpus root is not a folder")
    if not (root / "train.csv").is_file():
        raise ManifestError(f"{root / 'train.csv'}: missing; a folder corpus needs at least train.csv")

    rows: list[_Row] = []
    dropped = 0
    missing_splits: list[str] = []
    for split in SPLITS:
        csv_path = root / f"{split}.csv"
        if not csv_path.is_file():
            missing_splits.append(split)
            continue
        split_rows, n_dropped = _read_split_csv(csv_path, split)
        rows.extend(split_rows)
        dropped += n_dropped

    seen: dict[str, _Row] = {}
    for row in rows:
        if row.clip_id in seen:
            first = seen[row.clip_id]
            raise ManifestError(
                f"{row.where}: duplicate clip id {row.clip_id!r} "
                f"({row.audio_path}), already at {first.where} ({first.audio_path})"
            )
        seen[row.clip_id] = row

    kept: list[tuple[_Row, float]] = []
    missing: list[str] = []
    unreadable: list[str] = []
    for row in rows:
        path = root / row.audio_path
        if not path.is_file():
            missing.append(row.audio_path)
            continue
        try:
            sr, _channels, frames = audio_info(path)
        except AudioDecodeError as err:
            unreadable.append(f"{row.audio_path} ({err.reason})")
            continue
        kept.append((row, frames / sr))

    listed = {row.audio_path for row in rows}
    unlisted = [rel for rel in _audio_files_under(root) if rel not in listed]

    if strict:
        problems = []
        if missing:
            problems.append(f"{len(missing)} audio file(s) named in the CSVs are missing: {_examples(missing)}")
        if unreadable:
            problems.append(f"{len(unreadable)} audio file(s) are unreadable: {_examples(unreadable)}")
        if unlisted:
            problems.append(f"{len(unlisted)} audio file(s) are not named by any CSV: {_examples(unlisted)}")
        if problems:
            raise ManifestError(f"{root}: " + "; ".join(problems))
    if not kept:
        raise ManifestError(f"{root}: no usable clips (all {len(rows)} listed files missing or unreadable)")

    per_split = {s: sum(1 for r, _ in kept if r.split == s) for s in SPLITS if s not in missing_splits}
    report = CorpusReport(
        root=str(root),
        n_clips=len(kept),
        clips_per_split=per_split,
        missing_splits=tuple(missing_splits),
        missing_audio=tuple(missing),
        unreadable_audio=tuple(unreadable),
        unlisted_audio=tuple(unlisted),
        dropped_empty_captions=dropped,
    )
    (log.warning if not report.ok or missing_splits else log.info)("%s", report.summary())

    table = pa.table(
        {
            "clip_id": [r.clip_id for r, _ in kept],
            "split": [r.split for r, _ in kept],
            "audio_path": [r.audio_path for r, _ in kept],
            "captions": [list(r.captions) for r, _ in kept],
            "duration_s": [d for _, d in kept],
        },
        schema=MANIFEST_SCHEMA,
    )
    return _with_metadata(table, root=str(root), source="folder", report=report), report


def read_folder_corpus(root: str | Path, *, strict: bool = False) -> pa.Table:
    """:func:`scan_folder_corpus` without the report object (it stays in the table metadata)."""
    return scan_folder_corpus(root, strict=strict)[0]


def _with_metadata(table: pa.Table, *, root: str, source: str, report: CorpusReport | None) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta[ROOT_KEY] = root.encode()
    meta[SOURCE_KEY] = source.encode()
    if report is not None:
        meta[REPORT_KEY] = json.dumps(report.to_dict(), sort_keys=True).encode()
    return table.replace_schema_metadata(meta)


def corpus_report(table: pa.Table) -> dict[str, Any]:
    """The report stored in a manifest's metadata (see :meth:`CorpusReport.to_dict`), or {}."""
    raw = (table.schema.metadata or {}).get(REPORT_KEY)
    return json.loads(raw) if raw else {}


# --------------------------------------------------------------------------------------------
# Dispatch and (de)serialisation


def build_manifest(source: str, root: str | Path, *, strict: bool = False, **source_options: Any) -> pa.Table:
    """Build the manifest table for a corpus.

    Args:
        source: ``"folder"`` (an existing Clotho-style folder) or ``"demo"`` (generate the
            synthetic corpus into ``root`` first, then read it as a folder, always strictly).
        root: corpus root; stored in the table metadata as given.
        strict: see :func:`scan_folder_corpus`.
        source_options: for ``demo``, the keyword arguments of
            :func:`clapart_core.demo_corpus.generate_demo_corpus` (``n_clips``, ``clip_seconds``,
            ``sample_rate``, ``seed``, ``splits``); ``folder`` takes none.

    Raises:
        ValueError: unknown source or option.
        ManifestError: see :func:`scan_folder_corpus`.
    """
    root = Path(root)
    if source == "folder":
        if source_options:
            raise ValueError(f"source 'folder' takes no options, got {', '.join(sorted(source_options))}")
        return read_folder_corpus(root, strict=strict)
    if source == "demo":
        allowed = set(inspect.signature(generate_demo_corpus).parameters) - {"root"}
        unknown = sorted(set(source_options) - allowed)
        if unknown:
            raise ValueError(
                f"source 'demo' got unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        if "splits" in source_options:
            source_options["splits"] = tuple(source_options["splits"])
        generate_demo_corpus(root, **source_options)
        # The generator writes exactly what the CSVs name, so any gap is a bug: read strictly.
        table = read_folder_corpus(root, strict=True)
        return _with_metadata(table, root=str(root), source="demo", report=None)
    raise ValueError(f"unsupported data source {source!r}; supported sources: {', '.join(SUPPORTED_SOURCES)}")


def validate_manifest(table: pa.Table, where: str = "manifest") -> None:
    """Check the manifest contract; raise :class:`ManifestError` naming ``where`` and the problem."""
    names = table.schema.names
    for fld in MANIFEST_SCHEMA:
        if fld.name not in names:
            raise ManifestError(f"{where}: missing column {fld.name!r}")
        if not table.schema.field(fld.name).type.equals(fld.type):
            raise ManifestError(
                f"{where}: column {fld.name!r} has type {table.schema.field(fld.name).type}, expected {fld.type}"
            )
        if table.column(fld.name).null_count:
            raise ManifestError(f"{where}: column {fld.name!r} has null values")
    if ROOT_KEY not in (table.schema.metadata or {}):
        raise ManifestError(f"{where}: schema metadata lacks the corpus root ({ROOT_KEY.decode()})")
    ids = table.column("clip_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise ManifestError(f"{where}: duplicate clip_id {dup!r}")
    bad_split = set(table.column("split").to_pylist()) - set(SPLITS)
    if bad_split:
        raise ManifestError(f"{where}: unknown split(s) {sorted(bad_split)}; expected {list(SPLITS)}")
    for cid, caps in zip(ids, table.column("captions").to_pylist(), strict=True):
        if not caps or any(c is None or not c.strip() for c in caps):
            raise ManifestError(f"{where}: clip {cid!r} has no captions or an empty caption")
    for cid, rel in zip(ids, table.column("audio_path").to_pylist(), strict=True):
        _check_relative(rel, f"{where} clip {cid!r}")


def write_manifest(table: pa.Table, path: str | Path) -> None:
    """Validate and write the manifest atomically (temp file in the same folder + ``os.replace``).

    A relative root in the table (relative to the current directory) is stored relative to
    ``path``'s folder; an absolute root is stored unchanged.
    """
    path = Path(path)
    validate_manifest(table, str(path))
    meta = dict(table.schema.metadata or {})
    root = meta[ROOT_KEY].decode()
    if not os.path.isabs(root):
        root = os.path.relpath(os.path.abspath(root), os.path.abspath(path.parent))
        meta[ROOT_KEY] = Path(root).as_posix().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(path: str | Path) -> tuple[pa.Table, Path]:
    """Read and validate a manifest.

    Returns:
        ``(table, root)``: ``root`` is usable from the current directory (a stored relative root
        is resolved against the manifest's folder); the table's ``clapart.root`` metadata is
        replaced by the same path, so the table can be written again elsewhere.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"{path}: not a readable Parquet manifest ({err})") from err
    validate_manifest(table, str(path))
    stored = table.schema.metadata[ROOT_KEY].decode()
    root = Path(stored) if os.path.isabs(stored) else Path(os.path.normpath(path.parent / stored))
    meta = dict(table.schema.metadata)
    meta[ROOT_KEY] = str(root).encode()
    return table.replace_schema_metadata(meta), root
