"""The manifest (``manifest.parquet``): the one thing later stages read about a corpus.

Contract (one row per clip):

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
(JSON :class:`CorpusReport`: missing/unreadable/unlisted files, dropped captions, and every CSV
row left out with its reason, which the decode stage adds to ``metrics/decode.json``). In memory
the root is a path usable from the current directory; :func:`write_manifest` stores a
relative root relative to the manifest's own folder (so the file keeps working in a copied
repository such as a ``dvc exp run`` workspace) and an absolute root as is;
:func:`read_manifest` turns it back into a usable path.

Audio paths never leave the root: :func:`check_relative` refuses absolute paths and ``..``, and
:func:`resolve_audio_path` a path that a symlink leads out of the root.

One id convention for everything a user compares (:func:`file_names`): predictions
(``data/predictions/test.csv``), per-clip tables and the corpus's own caption CSVs name a clip by
its ``file_name`` *as that corpus's caption CSV writes it* — the path relative to the root for a
``folder`` corpus and the demo (``audio/test/demo_00001.wav``), the bare file name for Clotho
(whose CSVs say ``Santa Motor.wav``) and AudioCaps (``{youtube_id}_{start}.flac``, the file
aac-datasets writes). So ``clapart evaluate --predictions data/predictions/test.csv --references
<the corpus's test CSV>`` matches clip for clip. ``clip_id`` stays the internal key of the feature
and token files.

The readers that build a manifest from a corpus on disk are in :mod:`clapart_core.corpus.sources`
(:func:`clapart_core.corpus.build.build_manifest` picks one by ``data.source``); this module
holds only the contract, so the stages that read a manifest import nothing else of the corpus.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clapart_core.pipeline.atomic import atomic_path
from clapart_core.pipeline.errors import UserError
from clapart_core.pipeline.params import SPLITS

__all__ = [
    "MANIFEST_SCHEMA",
    "REPORT_KEY",
    "ROOT_KEY",
    "SOURCE_KEY",
    "CorpusReport",
    "ManifestError",
    "check_relative",
    "corpus_left_out",
    "corpus_report",
    "file_names",
    "read_manifest",
    "resolve_audio_path",
    "validate_manifest",
    "with_metadata",
    "write_manifest",
]

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

_MAX_EXAMPLES = 50  # file names kept per problem list in the stored report
#: sources whose caption CSVs name a clip by its bare file name (Clotho's ``file_name`` column;
#: AudioCaps' audio files are ``{youtube_id}_{start}.{ext}`` in one folder per split)
_BARE_NAME_SOURCES = frozenset({"clotho", "audiocaps"})


class ManifestError(UserError, ValueError):
    """A corpus or manifest is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class CorpusReport:
    """What reading a corpus found besides the clips it kept.

    Paths are relative to the corpus root. ``missing_audio`` / ``unreadable_audio`` rows are
    left out of the manifest; ``unlisted_audio`` are audio files under the root that no CSV names.
    ``left_out`` names every CSV row left out, ``{clip_id, split, audio_path, reason, detail}``
    (``reason`` as :class:`~clapart_core.corpus.audio.AudioDecodeError` spells it); it is stored
    whole, not cut to examples, because the decode stage reports each one.
    """

    root: str
    n_clips: int
    clips_per_split: dict[str, int]
    missing_splits: tuple[str, ...] = ()
    missing_audio: tuple[str, ...] = ()
    unreadable_audio: tuple[str, ...] = ()  # "rel/path.wav (reason)"
    unlisted_audio: tuple[str, ...] = ()
    dropped_empty_captions: int = 0
    left_out: tuple[dict[str, str], ...] = ()
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
        """JSON-ready dict; problem lists are cut to ``max_examples`` with their full counts
        (``left_out`` is kept whole)."""
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
        out["left_out"] = [dict(entry) for entry in self.left_out]
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------------------------
# Paths


def check_relative(rel: str, where: str) -> str:
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

    Absolute paths, drive letters and ``..`` components are refused (:func:`check_relative`), and
    so is a path that symlinks lead out of the root: both are compared with every symlink
    resolved, so a root that is itself a symlink into a data disk still works, but a link inside
    the corpus to ``/etc/hostname`` does not. (A missing file resolves as far as it exists.)

    Raises:
        ManifestError: the path escapes the root.
    """
    path = Path(root) / check_relative(rel, f"corpus root {root}")
    real = path.resolve()
    if not real.is_relative_to(Path(root).resolve()):
        raise ManifestError(
            f"{path}: a symlink leads out of the corpus root {root} (to {real}); copy the file into the corpus "
            "or point data.root at a folder that holds it"
        )
    return path


def file_names(table: pa.Table) -> dict[str, str]:
    """``clip_id -> file_name``: the id a clip has in its corpus's caption CSV, the one predictions
    and per-clip tables use (see the module docstring): ``audio_path`` for ``folder`` and ``demo``
    corpora, its last component for Clotho and AudioCaps (source from the table's metadata)."""
    source = (table.schema.metadata or {}).get(SOURCE_KEY, b"").decode()
    paths = table.column("audio_path").to_pylist()
    names = [PurePosixPath(p).name for p in paths] if source in _BARE_NAME_SOURCES else paths
    return dict(zip(table.column("clip_id").to_pylist(), names, strict=True))


def with_metadata(table: pa.Table, *, root: str, source: str, report: CorpusReport | None) -> pa.Table:
    """``table`` with the corpus root, source and (if given) report stored in its schema metadata."""
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


def corpus_left_out(table: pa.Table) -> list[dict[str, str]]:
    """The CSV rows the corpus stage left out of this manifest (see :class:`CorpusReport`), or []."""
    return list(corpus_report(table).get("left_out", []))


# --------------------------------------------------------------------------------------------
# Validation and (de)serialisation


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
        check_relative(rel, f"{where} clip {cid!r}")


def write_manifest(table: pa.Table, path: str | Path) -> None:
    """Validate and write the manifest atomically (:mod:`clapart_core.pipeline.atomic`).

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
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)


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
