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
root). ``demo`` writes :mod:`clapart_core.corpus.demo` into the root and reads it as a folder.

``clotho`` and ``audiocaps`` read a root in the layout aac-datasets 0.7.0 downloads to, so a
root prepared by ``aac-datasets-download`` (or copied from a machine that ran it) is read
as is, without aac-datasets installed:

* Clotho: ``CLOTHO_{version}/clotho_csv_files/clotho_captions_{development,validation,
  evaluation}.csv`` (``file_name, caption_1..caption_5``) and
  ``CLOTHO_{version}/clotho_audio_files/{development,validation,evaluation}/*.wav``,
  mapped to train / val / test.
* AudioCaps: ``AUDIOCAPS/csv_files_{version}/{train,val,test}.csv`` (``audiocap_id,
  youtube_id, start_time, caption``, one caption per line) and
  ``AUDIOCAPS/audio_{rate}Hz/{train,val,test}/{youtube_id}_{start_time}.flac``; captions are
  grouped per file (1 per training clip, 5 per val/test clip). Clips whose video was gone
  when it was downloaded are reported as missing audio.

``download=True`` fetches the splits not yet present with aac-datasets first (the optional
``[datasets]`` extra, imported only then).
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clapart_core.corpus.audio import AudioDecodeError, audio_info
from clapart_core.corpus.demo import generate_demo_corpus
from clapart_core.pipeline.params import DATA_SOURCES

__all__ = [
    "AUDIOCAPS_COLUMNS",
    "AUDIOCAPS_VERSIONS",
    "AUDIO_EXTENSIONS",
    "CLOTHO_CAPTION_COLUMNS",
    "CLOTHO_SUBSETS",
    "CLOTHO_VERSIONS",
    "MANIFEST_SCHEMA",
    "REPORT_KEY",
    "ROOT_KEY",
    "SOURCE_KEY",
    "SPLITS",
    "CorpusReport",
    "DatasetDownloadError",
    "ManifestError",
    "audiocaps_paths",
    "build_manifest",
    "clotho_paths",
    "corpus_report",
    "download_corpus",
    "read_folder_corpus",
    "read_manifest",
    "resolve_audio_path",
    "scan_audiocaps_corpus",
    "scan_clotho_corpus",
    "scan_folder_corpus",
    "validate_manifest",
    "write_manifest",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
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
    # No stripping here: dataset file names are taken verbatim (the folder reader strips its
    # hand-written CSV cells itself), so the checked path is the path that gets opened.
    pp = PurePosixPath(rel)
    if not rel.strip() or str(pp) == ".":
        raise ManifestError(f"{where}: empty audio path")
    if pp.is_absolute() or PureWindowsPath(rel).drive or ".." in pp.parts:
        raise ManifestError(f"{where}: audio path {rel!r} escapes the corpus root (absolute or '..')")
    return pp.as_posix()


def resolve_audio_path(root: str | Path, rel: str) -> Path:
    """``root / rel`` for a manifest ``audio_path``; refuses paths that escape the root.

    The check is lexical (absolute paths, drive letters and ``..`` components are refused), so
    a root that is itself a symlink into a data disk still works.
    """
    return Path(root) / _check_relative(rel, f"corpus root {root}")


# --------------------------------------------------------------------------------------------
# Reading caption CSVs


@dataclass(frozen=True)
class _Row:
    clip_id: str
    split: str
    audio_path: str
    captions: tuple[str, ...]
    where: str  # "train.csv line 7" for error messages


def _clean_caption(text: str) -> str:
    """Collapse runs of whitespace (CSV exports leave doubled spaces and line breaks)."""
    return " ".join(text.split())


def _read_csv_records(
    csv_path: Path, *, latin1_fallback: bool = False
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (cells stripped) and ``(line number, cells)`` per non-blank record of a CSV.

    The file is decoded as UTF-8 (a byte-order mark is ignored). With ``latin1_fallback`` a
    file that is not valid UTF-8 is decoded as ISO-8859-1 with a warning: Clotho ships its
    metadata CSVs in ISO-8859-1 (aac-datasets opens them that way), so a re-exported captions
    file in that encoding is a plausible quirk, while the folder format stays strictly UTF-8.
    """
    try:
        raw = csv_path.read_bytes()
    except OSError as err:
        raise ManifestError(f"{csv_path}: cannot open captions CSV ({err.strerror})") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if not latin1_fallback:
            raise ManifestError(f"{csv_path}: not a readable UTF-8 CSV ({err})") from err
        log.warning("%s: not valid UTF-8 (%s); decoding it as ISO-8859-1", csv_path, err)
        text = raw.decode("iso-8859-1")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ManifestError(f"{csv_path}: empty CSV, expected a header row") from None
        records = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise ManifestError(f"{csv_path}: not a readable CSV ({err})") from err
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ManifestError(f"{csv_path}: duplicate column(s) {', '.join(dup)}")
    return header, records


def _require_columns(csv_path: Path, header: list[str], required: tuple[str, ...]) -> dict[str, int]:
    """Column name -> index for ``required``; one error naming every missing column."""
    missing = [c for c in required if c not in header]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise ManifestError(f"{csv_path}: missing column(s) {names} (found: {', '.join(header) or 'none'})")
    return {c: header.index(c) for c in required}


def _read_split_csv(csv_path: Path, split: str) -> tuple[list[_Row], int]:
    """Parse one ``folder`` captions CSV; returns its rows and the number of empty captions dropped."""
    rows: list[_Row] = []
    dropped = 0
    header, records = _read_csv_records(csv_path)
    if "file_name" not in header:
        raise ManifestError(f"{csv_path}: missing column 'file_name'")
    cap_cols = sorted(
        ((int(m.group(1)), i) for i, h in enumerate(header) if (m := _CAPTION_COL.fullmatch(h))),
    )
    if not cap_cols:
        raise ManifestError(f"{csv_path}: missing column 'caption_1' (no caption_N columns)")
    name_col = header.index("file_name")
    for line, row in records:
        where = f"{csv_path} line {line}"
        if len(row) != len(header):
            raise ManifestError(f"{where}: {len(row)} fields, header has {len(header)}")
        # Hand-written CSVs: stray spaces around a path are not part of the file name.
        rel = _check_relative(row[name_col].strip(), where)
        caps = tuple(c for _, i in cap_cols if (c := _clean_caption(row[i])))
        dropped += len(cap_cols) - len(caps)
        if not caps:
            raise ManifestError(f"{where}: clip {rel!r} has no non-empty caption")
        clip_id = str(PurePosixPath(rel).with_suffix(""))
        rows.append(_Row(clip_id, split, rel, caps, where))
    return rows, dropped


def _bare_file_name(name: str, where: str) -> str:
    """A dataset CSV's file name, verbatim; it must name a file directly in the split folder."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        raise ManifestError(f"{where}: {name!r} is not a plain file name")
    return name


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


def _finish_corpus(
    root: Path,
    rows: list[_Row],
    *,
    source: str,
    strict: bool,
    allow_unlisted: bool = False,
    missing_splits: tuple[str, ...] = (),
    dropped: int = 0,
    audio_dirs: tuple[str, ...] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[pa.Table, CorpusReport]:
    """Shared tail of every reader: ids, presence on disk, durations, report, table.

    Args:
        root: corpus root; ``rows`` hold audio paths relative to it.
        rows: every clip the CSVs list, in manifest order.
        source: stored as ``clapart.source``.
        strict: make missing and unreadable audio files errors (they are reported otherwise).
        allow_unlisted: report audio files no CSV names instead of failing. By default they are
            an error: a captioned corpus with uncaptioned audio beside it is almost always a
            CSV that lost rows or a file renamed on disk, and it is cheap to say so here,
            before hours of feature extraction.
        missing_splits: splits without a CSV (reported).
        dropped: empty captions dropped while reading (reported).
        audio_dirs: folders (relative to ``root``) searched for audio no CSV names; ``None``
            searches the whole root. Dataset layouts name their split folders, so other
            datasets sharing an aac-datasets root are not reported as unlisted.
        extra: additional report fields.
    """
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
    if audio_dirs is None:
        on_disk = _audio_files_under(root)
    else:
        on_disk = sorted(
            f"{d}/{rel}" for d in audio_dirs if (root / d).is_dir() for rel in _audio_files_under(root / d)
        )
    unlisted = [rel for rel in on_disk if rel not in listed]

    if unlisted and not allow_unlisted:
        raise ManifestError(
            f"{root}: {len(unlisted)} audio file(s) are not named by any CSV: {_examples(unlisted)} "
            "(add them to a CSV, remove them, or set data.allow_unlisted: true to only report them)"
        )
    if strict:
        problems = []
        if missing:
            problems.append(f"{len(missing)} audio file(s) named in the CSVs are missing: {_examples(missing)}")
        if unreadable:
            problems.append(f"{len(unreadable)} audio file(s) are unreadable: {_examples(unreadable)}")
        if problems:
            raise ManifestError(f"{root}: " + "; ".join(problems))
    if not kept:
        raise ManifestError(f"{root}: no usable clips (all {len(rows)} listed files missing or unreadable)")

    per_split = {s: sum(1 for r, _ in kept if r.split == s) for s in SPLITS if s not in missing_splits}
    # How many references each kept clip has, per split: AudioCaps train has 1, its val/test and
    # every Clotho split 5; a surprise here means a wrong CSV, seen before any long stage.
    caps_per_clip: dict[str, dict[str, int]] = {}
    for r, _ in kept:
        counts = caps_per_clip.setdefault(r.split, {})
        counts[str(len(r.captions))] = counts.get(str(len(r.captions)), 0) + 1
    report = CorpusReport(
        root=str(root),
        n_clips=len(kept),
        clips_per_split=per_split,
        missing_splits=missing_splits,
        missing_audio=tuple(missing),
        unreadable_audio=tuple(unreadable),
        unlisted_audio=tuple(unlisted),
        dropped_empty_captions=dropped,
        extra={"captions_per_clip": caps_per_clip, **(extra or {})},
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
    return _with_metadata(table, root=str(root), source=source, report=report), report


# --------------------------------------------------------------------------------------------
# Folder corpus


def scan_folder_corpus(
    root: str | Path, *, strict: bool = False, allow_unlisted: bool = False
) -> tuple[pa.Table, CorpusReport]:
    """Read a ``folder`` corpus into a manifest table plus a report of what was left out.

    Args:
        root: folder holding ``train.csv`` (required), ``val.csv`` / ``test.csv`` (optional)
            and the audio files they name (``file_name`` relative to ``root``).
        strict: make missing and unreadable audio files errors instead of reported
            omissions (use it to fail before a long stage).
        allow_unlisted: only report audio files that no CSV names (by default an error).

    Returns:
        ``(table, report)``; the table follows :data:`MANIFEST_SCHEMA` with the root, source
        ``"folder"`` and the report in its schema metadata. Clips whose audio is missing or
        unreadable are left out (and listed in the report).

    Raises:
        ManifestError: missing ``train.csv``, a bad CSV (missing column, ragged row, path
            escaping the root, clip without captions), duplicate clip ids, audio that no CSV
            names (unless ``allow_unlisted``), or in ``strict`` mode any missing/unreadable
            audio file.
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
    return _finish_corpus(
        root,
        rows,
        source="folder",
        strict=strict,
        allow_unlisted=allow_unlisted,
        missing_splits=tuple(missing_splits),
        dropped=dropped,
    )


def read_folder_corpus(root: str | Path, *, strict: bool = False, allow_unlisted: bool = False) -> pa.Table:
    """:func:`scan_folder_corpus` without the report object (it stays in the table metadata)."""
    return scan_folder_corpus(root, strict=strict, allow_unlisted=allow_unlisted)[0]


# --------------------------------------------------------------------------------------------
# Clotho and AudioCaps in aac-datasets' layout (https://github.com/Labbeti/aac-datasets, 0.7.0)

CLOTHO_VERSIONS: tuple[str, ...] = ("v1", "v2", "v2.1")
AUDIOCAPS_VERSIONS: tuple[str, ...] = ("v1", "v2")
# Our split -> (aac-datasets subset name, Clotho folder/CSV suffix). Clotho v1 has no validation.
CLOTHO_SUBSETS: dict[str, tuple[str, str]] = {
    "train": ("dev", "development"),
    "val": ("val", "validation"),
    "test": ("eval", "evaluation"),
}
CLOTHO_CAPTION_COLUMNS: tuple[str, ...] = tuple(f"caption_{i}" for i in range(1, 6))
AUDIOCAPS_COLUMNS: tuple[str, ...] = ("audiocap_id", "youtube_id", "start_time", "caption")
_AAC_DEFAULTS: dict[str, dict[str, Any]] = {
    "clotho": {"version": "v2.1"},
    "audiocaps": {"version": "v1", "sample_rate": 32_000, "audio_format": "flac"},
}
_PRETTY = {"clotho": "Clotho", "audiocaps": "AudioCaps"}


class DatasetDownloadError(RuntimeError):
    """A dataset could not be downloaded; the message says what to install or run instead."""


def _clotho_splits(version: str) -> tuple[str, ...]:
    return tuple(s for s in SPLITS if not (version == "v1" and s == "val"))


def clotho_paths(root: str | Path, split: str, version: str = "v2.1") -> tuple[Path, Path]:
    """``(captions CSV, audio folder)`` of one Clotho split in aac-datasets' layout.

    ``{root}/CLOTHO_{version}/clotho_csv_files/clotho_captions_{development|validation|evaluation}.csv``
    and ``{root}/CLOTHO_{version}/clotho_audio_files/{development|validation|evaluation}/``.
    """
    base = Path(root) / f"CLOTHO_{version}"
    dname = CLOTHO_SUBSETS[split][1]
    return base / "clotho_csv_files" / f"clotho_captions_{dname}.csv", base / "clotho_audio_files" / dname


def audiocaps_paths(
    root: str | Path, split: str, version: str = "v1", sample_rate: int = 32_000
) -> tuple[Path, Path]:
    """``(captions CSV, audio folder)`` of one AudioCaps split in aac-datasets' layout.

    ``{root}/AUDIOCAPS/csv_files_{version}/{split}.csv`` (for v1 also the older
    ``{root}/AUDIOCAPS/{split}.csv``, which aac-datasets still prefers when present) and
    ``{root}/AUDIOCAPS/audio_{sample_rate}Hz/{split}/``. Our split names equal its subsets.
    """
    base = Path(root) / "AUDIOCAPS"
    legacy = base / f"{split}.csv"
    csv_path = legacy if version == "v1" and legacy.is_file() else base / f"csv_files_{version}" / f"{split}.csv"
    return csv_path, base / f"audio_{sample_rate}Hz" / split


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_clotho_csv(csv_path: Path, split: str, audio_dir: str) -> tuple[list[_Row], int]:
    """One Clotho captions CSV (``file_name, caption_1..caption_5``) -> rows and dropped count."""
    header, records = _read_csv_records(csv_path, latin1_fallback=True)
    cols = _require_columns(csv_path, header, ("file_name", *CLOTHO_CAPTION_COLUMNS))
    rows: list[_Row] = []
    dropped = 0
    for line, row in records:
        where = f"{csv_path} line {line}"
        if len(row) != len(header):
            raise ManifestError(f"{where}: {len(row)} fields, header has {len(header)}")
        rel = _check_relative(f"{audio_dir}/{_bare_file_name(row[cols['file_name']], where)}", where)
        caps = tuple(c for col in CLOTHO_CAPTION_COLUMNS if (c := _clean_caption(row[cols[col]])))
        dropped += len(CLOTHO_CAPTION_COLUMNS) - len(caps)
        if not caps:
            raise ManifestError(f"{where}: clip {row[cols['file_name']]!r} has no non-empty caption")
        rows.append(_Row(str(PurePosixPath(rel).with_suffix("")), split, rel, caps, where))
    return rows, dropped


def _read_audiocaps_csv(csv_path: Path, split: str, audio_dir: str, audio_format: str) -> tuple[list[_Row], int]:
    """One AudioCaps CSV (one caption per line) -> one row per audio file, captions in CSV order.

    The file name is aac-datasets' ``{youtube_id}_{start_time}.{audio_format}``; rows sharing
    it are one clip (train has 1 caption per clip, val/test 5).
    """
    header, records = _read_csv_records(csv_path)
    cols = _require_columns(csv_path, header, AUDIOCAPS_COLUMNS)
    grouped: dict[str, tuple[str, list[str]]] = {}  # file name -> (first line, captions)
    dropped = 0
    for line, row in records:
        where = f"{csv_path} line {line}"
        if len(row) != len(header):
            raise ManifestError(f"{where}: {len(row)} fields, header has {len(header)}")
        youtube_id = row[cols["youtube_id"]].strip()
        if not youtube_id:
            raise ManifestError(f"{where}: empty youtube_id")
        start = row[cols["start_time"]].strip()
        if not start.isdigit():
            # aac-datasets' downloader refuses these too, so no such file can exist.
            raise ManifestError(f"{where}: start_time {start!r} is not a whole number of seconds")
        fname = _bare_file_name(f"{youtube_id}_{int(start)}.{audio_format}", where)
        entry = grouped.setdefault(fname, (where, []))
        caption = _clean_caption(row[cols["caption"]])
        if caption:
            entry[1].append(caption)
        else:
            dropped += 1
    rows: list[_Row] = []
    for fname, (where, caps) in grouped.items():
        if not caps:
            raise ManifestError(f"{where}: clip {fname!r} has no non-empty caption")
        rel = _check_relative(f"{audio_dir}/{fname}", where)
        rows.append(_Row(str(PurePosixPath(rel).with_suffix("")), split, rel, tuple(caps), where))
    return rows, dropped


def _aac_layout_error(source: str, root: Path, what: Path, problem: str) -> ManifestError:
    """One-line error for a root that is not (fully) in aac-datasets' layout."""
    return ManifestError(
        f"{what}: {problem}; expected {_PRETTY[source]} in aac-datasets' layout under {root} "
        f"(set data.download: true, or run `aac-datasets-download --root {root} {source}`)"
    )


def scan_clotho_corpus(
    root: str | Path, *, strict: bool = False, allow_unlisted: bool = False, version: str = "v2.1"
) -> tuple[pa.Table, CorpusReport]:
    """Read Clotho as aac-datasets lays it out (see :func:`clotho_paths`) into a manifest.

    Subsets map to splits development -> train, validation -> val, evaluation -> test (v1 has
    no validation subset; it is reported as a missing split). Clip ids are the audio paths
    without extension, e.g. ``CLOTHO_v2.1/clotho_audio_files/development/Rain on a roof``;
    file names are taken verbatim (Clotho's contain spaces, commas and non-ASCII letters).

    Raises:
        ManifestError: missing root, CSV or audio folder; a CSV lacking ``file_name`` or a
            ``caption_1..caption_5`` column; see also :func:`scan_folder_corpus`.
    """
    if version not in CLOTHO_VERSIONS:
        raise ValueError(f"unknown Clotho version {version!r}; expected one of {', '.join(CLOTHO_VERSIONS)}")
    root = Path(root)
    if not root.is_dir():
        raise _aac_layout_error("clotho", root, root, "corpus root is not a folder")
    rows: list[_Row] = []
    dropped = 0
    audio_dirs: list[str] = []
    for split in _clotho_splits(version):
        csv_path, audio_dir = clotho_paths(root, split, version)
        if not csv_path.is_file():
            raise _aac_layout_error("clotho", root, csv_path, "missing captions CSV")
        if not audio_dir.is_dir():
            raise _aac_layout_error("clotho", root, audio_dir, "missing audio folder")
        split_rows, n_dropped = _read_clotho_csv(csv_path, split, _rel(root, audio_dir))
        rows.extend(split_rows)
        dropped += n_dropped
        audio_dirs.append(_rel(root, audio_dir))
    return _finish_corpus(
        root,
        rows,
        source="clotho",
        strict=strict,
        allow_unlisted=allow_unlisted,
        missing_splits=tuple(s for s in SPLITS if s not in _clotho_splits(version)),
        dropped=dropped,
        audio_dirs=tuple(audio_dirs),
        extra={"dataset": "clotho", "version": version},
    )


def scan_audiocaps_corpus(
    root: str | Path,
    *,
    strict: bool = False,
    allow_unlisted: bool = False,
    version: str = "v1",
    sample_rate: int = 32_000,
    audio_format: str = "flac",
) -> tuple[pa.Table, CorpusReport]:
    """Read AudioCaps as aac-datasets lays it out (see :func:`audiocaps_paths`) into a manifest.

    Captions (one CSV line each) are grouped per audio file ``{youtube_id}_{start_time}.flac``.
    Some YouTube videos are always gone, so clips missing on disk are counted in the report and
    left out; ``strict=True`` makes them an error. Clip ids are the audio paths without
    extension, e.g. ``AUDIOCAPS/audio_32000Hz/train/--0w1YA1Hm4_30``.

    Raises:
        ManifestError: missing root, CSV or audio folder; a CSV lacking one of
            ``audiocap_id, youtube_id, start_time, caption``; a non-integer start time.
    """
    if version not in AUDIOCAPS_VERSIONS:
        raise ValueError(f"unknown AudioCaps version {version!r}; expected one of {', '.join(AUDIOCAPS_VERSIONS)}")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"AudioCaps sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if f".{audio_format}".lower() not in AUDIO_EXTENSIONS:
        raise ValueError(f"AudioCaps audio_format {audio_format!r} is not one of {', '.join(sorted(AUDIO_EXTENSIONS))}")
    root = Path(root)
    if not root.is_dir():
        raise _aac_layout_error("audiocaps", root, root, "corpus root is not a folder")
    rows: list[_Row] = []
    dropped = 0
    audio_dirs: list[str] = []
    listed: dict[str, int] = {}
    for split in SPLITS:
        csv_path, audio_dir = audiocaps_paths(root, split, version, sample_rate)
        if not csv_path.is_file():
            raise _aac_layout_error("audiocaps", root, csv_path, "missing captions CSV")
        if not audio_dir.is_dir():
            raise _aac_layout_error("audiocaps", root, audio_dir, "missing audio folder")
        split_rows, n_dropped = _read_audiocaps_csv(csv_path, split, _rel(root, audio_dir), audio_format)
        rows.extend(split_rows)
        dropped += n_dropped
        audio_dirs.append(_rel(root, audio_dir))
        listed[split] = len(split_rows)
    return _finish_corpus(
        root,
        rows,
        source="audiocaps",
        strict=strict,
        allow_unlisted=allow_unlisted,
        dropped=dropped,
        audio_dirs=tuple(audio_dirs),
        extra={"dataset": "audiocaps", "version": version, "sample_rate": sample_rate, "listed_per_split": listed},
    )


def _clotho_prepared(root: Path, split: str, version: str) -> bool:
    """aac-datasets' own test: the CSV exists and the folder holds as many .wav as it lists."""
    csv_path, audio_dir = clotho_paths(root, split, version)
    if not (csv_path.is_file() and audio_dir.is_dir()):
        return False
    try:
        _header, records = _read_csv_records(csv_path, latin1_fallback=True)
    except ManifestError:
        return False
    return sum(1 for p in audio_dir.iterdir() if p.suffix.lower() == ".wav") >= len(records)


def _audiocaps_prepared(root: Path, split: str, version: str, sample_rate: int, audio_format: str) -> bool:
    """aac-datasets' own test: the CSV exists and the folder holds at least one audio file.

    A complete AudioCaps never exists (videos disappear from YouTube), so "some audio" is the
    only usable criterion; rerunning the download for a partial split fetches what is missing.
    """
    csv_path, audio_dir = audiocaps_paths(root, split, version, sample_rate)
    return (
        csv_path.is_file()
        and audio_dir.is_dir()
        and any(p.name.endswith(f".{audio_format}") for p in audio_dir.iterdir())
    )


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def download_corpus(source: str, root: str | Path, **options: Any) -> None:
    """Download Clotho or AudioCaps into ``root`` with aac-datasets (the ``[datasets]`` extra).

    Splits already in place are skipped before aac-datasets is imported, so a prepared root
    needs neither the package nor the network (and Clotho's multi-GB archives, which
    aac-datasets deletes after extraction, are not fetched again).

    Args:
        source: ``"clotho"`` or ``"audiocaps"``.
        root: the aac-datasets root (created if missing).
        options: ``version`` (both), ``sample_rate`` and ``audio_format`` (AudioCaps).

    Raises:
        DatasetDownloadError: aac-datasets (or, for AudioCaps, yt-dlp / ffmpeg) is missing, or
            the download failed (network unreachable, bad checksum); one sentence saying what
            to install or run.
    """
    if source not in _AAC_DEFAULTS:
        raise ValueError(f"cannot download source {source!r}; downloadable sources: {', '.join(_AAC_DEFAULTS)}")
    unknown = sorted(set(options) - set(_AAC_DEFAULTS[source]))
    if unknown:
        raise ValueError(f"download of {source!r} got unknown option(s) {', '.join(unknown)}")
    opts = {**_AAC_DEFAULTS[source], **options}
    root = Path(root)
    pretty = _PRETTY[source]
    if source == "clotho":
        todo = [s for s in _clotho_splits(opts["version"]) if not _clotho_prepared(root, s, opts["version"])]
    else:
        todo = [
            s for s in SPLITS
            if not _audiocaps_prepared(root, s, opts["version"], opts["sample_rate"], opts["audio_format"])
        ]
    if not todo:
        log.info("%s already in %s; nothing to download", pretty, root)
        return
    instead = (
        f"or download {pretty} elsewhere with `aac-datasets-download --root ROOT {source}`, "
        f"copy it to {root} and set data.download: false"
    )
    try:
        if source == "clotho":
            from aac_datasets.datasets.functional.clotho import download_clotho_dataset as download
        else:
            from aac_datasets.datasets.functional.audiocaps import download_audiocaps_dataset as download
            from aac_datasets.utils.globals import get_default_ffmpeg_path, get_default_ytdlp_path
    except ImportError as err:
        raise DatasetDownloadError(
            f"data.download: true needs the optional package aac-datasets ({_one_line(err)}); "
            f"install it with `pip install 'clapart[datasets]'` (aac-datasets 0.7.0), {instead}"
        ) from None
    if source == "audiocaps":
        tools = {"yt-dlp": get_default_ytdlp_path(), "ffmpeg": get_default_ffmpeg_path()}
        absent = [f"{name} ({path})" for name, path in tools.items() if shutil.which(path) is None]
        if absent:
            raise DatasetDownloadError(
                f"downloading AudioCaps needs {' and '.join(absent)} on PATH (or in AAC_DATASETS_YTDLP_PATH / "
                f"AAC_DATASETS_FFMPEG_PATH); install them, {instead}"
            )
    root.mkdir(parents=True, exist_ok=True)
    for split in todo:
        log.info("downloading %s %s into %s with aac-datasets", pretty, split, root)
        try:
            if source == "clotho":
                download(root=str(root), subset=CLOTHO_SUBSETS[split][0], version=opts["version"], verbose=1)
            else:
                download(
                    root=str(root),
                    subset=split,
                    version=opts["version"],
                    sr=opts["sample_rate"],
                    audio_format=opts["audio_format"],
                    verbose=1,
                )
        except OSError as err:  # URLError, socket and HTTP errors are all OSError
            raise DatasetDownloadError(
                f"downloading {pretty} {split} into {root} failed ({_one_line(err)}); check that this "
                f"machine can reach the internet, {instead}"
            ) from err
        except RuntimeError as err:  # aac-datasets' checksum and extraction failures
            raise DatasetDownloadError(
                f"aac-datasets could not prepare {pretty} {split} in {root} ({_one_line(err)}); "
                f"remove the partial files it names and retry, {instead}"
            ) from err


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


def build_manifest(
    source: str,
    root: str | Path,
    *,
    strict: bool = False,
    allow_unlisted: bool = False,
    download: bool = False,
    **source_options: Any,
) -> pa.Table:
    """Build the manifest table for a corpus.

    Args:
        source: ``"folder"`` (an existing Clotho-style folder), ``"demo"`` (generate the
            synthetic corpus into ``root`` first, then read it as a folder, always strictly),
            ``"clotho"`` or ``"audiocaps"`` (aac-datasets' layout, see
            :func:`scan_clotho_corpus` / :func:`scan_audiocaps_corpus`).
        root: corpus root; stored in the table metadata as given.
        strict, allow_unlisted: see :func:`scan_folder_corpus`.
        download: ``clotho`` / ``audiocaps`` only: first fetch the splits not yet in ``root``
            with aac-datasets (:func:`download_corpus`). Reading never needs aac-datasets.
        source_options: for ``demo``, the keyword arguments of
            :func:`clapart_core.corpus.demo.generate_demo_corpus` (``n_clips``, ``clip_seconds``,
            ``sample_rate``, ``seed``, ``splits``); for ``clotho`` ``version`` (default
            ``v2.1``); for ``audiocaps`` ``version`` (``v1``), ``sample_rate`` (32000) and
            ``audio_format`` (``flac``); ``folder`` takes none.

    Raises:
        ValueError: unknown source or option.
        ManifestError: see :func:`scan_folder_corpus` and the dataset readers.
        DatasetDownloadError: see :func:`download_corpus`.
    """
    root = Path(root)
    if download and source not in _AAC_DEFAULTS:
        raise ValueError(f"source {source!r} cannot be downloaded; download applies to {', '.join(_AAC_DEFAULTS)}")
    if source == "folder":
        if source_options:
            raise ValueError(f"source 'folder' takes no options, got {', '.join(sorted(source_options))}")
        return read_folder_corpus(root, strict=strict, allow_unlisted=allow_unlisted)
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
    if source in _AAC_DEFAULTS:
        unknown = sorted(set(source_options) - set(_AAC_DEFAULTS[source]))
        if unknown:
            raise ValueError(
                f"source {source!r} got unknown option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(_AAC_DEFAULTS[source]))}"
            )
        if download:
            download_corpus(source, root, **source_options)
        scan = scan_clotho_corpus if source == "clotho" else scan_audiocaps_corpus
        return scan(root, strict=strict, allow_unlisted=allow_unlisted, **source_options)[0]
    raise ValueError(f"unsupported data source {source!r}; supported sources: {', '.join(DATA_SOURCES)}")


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
