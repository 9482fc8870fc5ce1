"""``data.source`` -> the manifest table: generate the demo or download a dataset first, then read it."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pyarrow as pa

from clapart_core.corpus.demo import generate_demo_corpus
from clapart_core.corpus.download import download_corpus
from clapart_core.corpus.manifest import with_metadata
from clapart_core.corpus.sources import AAC_DEFAULTS, read_folder_corpus, scan_audiocaps_corpus, scan_clotho_corpus
from clapart_core.pipeline.params import DATA_SOURCES

__all__ = ["build_manifest"]


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
            :mod:`clapart_core.corpus.sources`).
        root: corpus root; stored in the table metadata as given.
        strict, allow_unlisted: see :func:`clapart_core.corpus.sources.scan_folder_corpus`.
        download: ``clotho`` / ``audiocaps`` only: first fetch the splits not yet in ``root``
            with aac-datasets (:func:`clapart_core.corpus.download.download_corpus`). Reading
            never needs aac-datasets.
        source_options: for ``demo``, the keyword arguments of
            :func:`clapart_core.corpus.demo.generate_demo_corpus` (``n_clips``, ``clip_seconds``,
            ``sample_rate``, ``seed``, ``splits``); for ``clotho`` ``version`` (default
            ``v2.1``); for ``audiocaps`` ``version`` (``v1``), ``sample_rate`` (32000) and
            ``audio_format`` (``flac``); ``folder`` takes none.

    Raises:
        ValueError: unknown source or option.
        ManifestError: see the readers in :mod:`clapart_core.corpus.sources`.
        DatasetDownloadError: see :func:`clapart_core.corpus.download.download_corpus`.
    """
    root = Path(root)
    if download and source not in AAC_DEFAULTS:
        raise ValueError(f"source {source!r} cannot be downloaded; download applies to {', '.join(AAC_DEFAULTS)}")
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
        return with_metadata(table, root=str(root), source="demo", report=None)
    if source in AAC_DEFAULTS:
        unknown = sorted(set(source_options) - set(AAC_DEFAULTS[source]))
        if unknown:
            raise ValueError(
                f"source {source!r} got unknown option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(AAC_DEFAULTS[source]))}"
            )
        if download:
            download_corpus(source, root, **source_options)
        scan = scan_clotho_corpus if source == "clotho" else scan_audiocaps_corpus
        return scan(root, strict=strict, allow_unlisted=allow_unlisted, **source_options)[0]
    raise ValueError(f"unsupported data source {source!r}; supported sources: {', '.join(DATA_SOURCES)}")
