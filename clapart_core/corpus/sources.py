"""Readers of the three on-disk corpus layouts -> a manifest table (:mod:`clapart_core.corpus.manifest`).

The ``folder`` source is ``{root}/train.csv`` (required), ``val.csv``, ``test.csv`` (optional)
with columns ``file_name, caption_1..caption_N`` (Clotho style, ``file_name`` relative to the
root). ``demo`` writes :mod:`clapart_core.corpus.demo` into the root and reads it as a folder.

``clotho`` and ``audiocaps`` read a root in the layout aac-datasets 0.7.0 downloads to, so a
root prepared by ``aac-datasets-download`` (or copied from a machine that ran it) is read
as is, without aac-datasets installed (:mod:`clapart_core.corpus.download` fetches it):

* Clotho: ``CLOTHO_{version}/clotho_csv_files/clotho_captions_{development,validation,
  evaluation}.csv`` (``file_name, caption_1..caption_5``) and
  ``CLOTHO_{version}/clotho_audio_files/{development,validation,evaluation}/*.wav``,
  mapped to train / val / test.
* AudioCaps: ``AUDIOCAPS/csv_files_{version}/{train,val,test}.csv`` (``audiocap_id,
  youtube_id, start_time, caption``, one caption per line) and
  ``AUDIOCAPS/audio_{rate}Hz/{train,val,test}/{youtube_id}_{start_time}.flac``; captions are
  grouped per file (1 per training clip, 5 per val/test clip). Clips whose video was gone
  when it was downloaded are reported as missing audio.

Every reader ends in the same tail (:func:`_finish_corpus`): unique ids, presence on disk,
durations from the audio headers, the :class:`~clapart_core.corpus.manifest.CorpusReport`.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from clapart_core.corpus.audio import AudioDecodeError, audio_info
from clapart_core.corpus.manifest import MANIFEST_SCHEMA, CorpusReport, ManifestError, check_relative, resolve_audio_path, with_metadata
from clapart_core.pipeline.params import AUDIOCAPS_VERSIONS, CLOTHO_VERSIONS, SPLITS

__all__ = [
    "AAC_DEFAULTS",
    "AUDIOCAPS_COLUMNS",
    "AUDIOCAPS_VERSIONS",
    "AUDIO_EXTENSIONS",
    "CLOTHO_CAPTION_COLUMNS",
    "CLOTHO_SUBSETS",
    "CLOTHO_VERSIONS",
    "DATASET_NAMES",
    "audiocaps_paths",
    "clotho_paths",
    "clotho_splits",
    "read_csv_records",
    "read_folder_corpus",
    "scan_audiocaps_corpus",
    "scan_clotho_corpus",
    "scan_folder_corpus",
]

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".opus"})
_CAPTION_COL = re.compile(r"caption_(\d+)")


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


def read_csv_records(
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
    header, records = read_csv_records(csv_path)
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
        rel = check_relative(row[name_col].strip(), where)
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


def _left_out(row: _Row, reason: str, detail: str) -> dict[str, str]:
    return {"clip_id": row.clip_id, "split": row.split, "audio_path": row.audio_path, "reason": reason, "detail": detail}


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
    left_out: list[dict[str, str]] = []  # every row not kept, for metrics/decode.json
    for row in rows:
        path = resolve_audio_path(root, row.audio_path)  # a symlink out of the root is refused
        if not path.exists():  # (a folder or a fifo is 'unreadable', from audio_info)
            missing.append(row.audio_path)
            left_out.append(_left_out(row, "missing", "audio file does not exist"))
            continue
        try:
            sr, _channels, frames = audio_info(path)
        except AudioDecodeError as err:
            unreadable.append(f"{row.audio_path} ({err.reason})")
            left_out.append(_left_out(row, err.reason, err.detail))
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
        left_out=tuple(left_out),
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
    return with_metadata(table, root=str(root), source=source, report=report), report


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

# Our split -> (aac-datasets subset name, Clotho folder/CSV suffix). Clotho v1 has no validation.
CLOTHO_SUBSETS: dict[str, tuple[str, str]] = {
    "train": ("dev", "development"),
    "val": ("val", "validation"),
    "test": ("eval", "evaluation"),
}
CLOTHO_CAPTION_COLUMNS: tuple[str, ...] = tuple(f"caption_{i}" for i in range(1, 6))
AUDIOCAPS_COLUMNS: tuple[str, ...] = ("audiocap_id", "youtube_id", "start_time", "caption")
#: the sources read in aac-datasets' layout -> the options each takes, with their defaults
AAC_DEFAULTS: dict[str, dict[str, Any]] = {
    "clotho": {"version": "v2.1"},
    "audiocaps": {"version": "v1", "sample_rate": 32_000, "audio_format": "flac"},
}
DATASET_NAMES = {"clotho": "Clotho", "audiocaps": "AudioCaps"}  # as messages spell them


def clotho_splits(version: str) -> tuple[str, ...]:
    """The splits a Clotho version has (v1 has no validation subset)."""
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
    header, records = read_csv_records(csv_path, latin1_fallback=True)
    cols = _require_columns(csv_path, header, ("file_name", *CLOTHO_CAPTION_COLUMNS))
    rows: list[_Row] = []
    dropped = 0
    for line, row in records:
        where = f"{csv_path} line {line}"
        if len(row) != len(header):
            raise ManifestError(f"{where}: {len(row)} fields, header has {len(header)}")
        rel = check_relative(f"{audio_dir}/{_bare_file_name(row[cols['file_name']], where)}", where)
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
    header, records = read_csv_records(csv_path)
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
        rel = check_relative(f"{audio_dir}/{fname}", where)
        rows.append(_Row(str(PurePosixPath(rel).with_suffix("")), split, rel, tuple(caps), where))
    return rows, dropped


def _aac_layout_error(source: str, root: Path, what: Path, problem: str) -> ManifestError:
    """One-line error for a root that is not (fully) in aac-datasets' layout."""
    return ManifestError(
        f"{what}: {problem}; expected {DATASET_NAMES[source]} in aac-datasets' layout under {root} "
        f"(set data.download: true, or run `aac-datasets-download --root {root} {source}`)"
    )


def _read_aac_layout(
    source: str,
    root: Path,
    splits: tuple[str, ...],
    paths: Callable[[str], tuple[Path, Path]],
    read_csv: Callable[[Path, str, str], tuple[list[_Row], int]],
) -> tuple[list[_Row], int, tuple[str, ...]]:
    """Read every split of an aac-datasets root: ``(rows, empty captions dropped, audio folders)``.

    ``paths(split)`` gives the split's ``(captions CSV, audio folder)``, which must both exist;
    ``read_csv(csv_path, split, audio folder relative to root)`` parses the CSV.
    """
    if not root.is_dir():
        raise _aac_layout_error(source, root, root, "corpus root is not a folder")
    rows: list[_Row] = []
    dropped = 0
    audio_dirs: list[str] = []
    for split in splits:
        csv_path, audio_dir = paths(split)
        if not csv_path.is_file():
            raise _aac_layout_error(source, root, csv_path, "missing captions CSV")
        if not audio_dir.is_dir():
            raise _aac_layout_error(source, root, audio_dir, "missing audio folder")
        split_rows, n_dropped = read_csv(csv_path, split, _rel(root, audio_dir))
        rows.extend(split_rows)
        dropped += n_dropped
        audio_dirs.append(_rel(root, audio_dir))
    return rows, dropped, tuple(audio_dirs)


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
    rows, dropped, audio_dirs = _read_aac_layout(
        "clotho", root, clotho_splits(version), lambda split: clotho_paths(root, split, version), _read_clotho_csv
    )
    return _finish_corpus(
        root,
        rows,
        source="clotho",
        strict=strict,
        allow_unlisted=allow_unlisted,
        missing_splits=tuple(s for s in SPLITS if s not in clotho_splits(version)),
        dropped=dropped,
        audio_dirs=audio_dirs,
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
    rows, dropped, audio_dirs = _read_aac_layout(
        "audiocaps",
        root,
        SPLITS,
        lambda split: audiocaps_paths(root, split, version, sample_rate),
        partial(_read_audiocaps_csv, audio_format=audio_format),
    )
    listed = {split: sum(1 for r in rows if r.split == split) for split in SPLITS}  # clips each CSV names
    return _finish_corpus(
        root,
        rows,
        source="audiocaps",
        strict=strict,
        allow_unlisted=allow_unlisted,
        dropped=dropped,
        audio_dirs=audio_dirs,
        extra={"dataset": "audiocaps", "version": version, "sample_rate": sample_rate, "listed_per_split": listed},
    )

