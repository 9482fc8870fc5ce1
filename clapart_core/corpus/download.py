"""Fetching Clotho and AudioCaps with aac-datasets (the optional ``[datasets]`` extra).

``data.download: true`` fetches the splits not yet in the root, in the layout that
:mod:`clapart_core.corpus.sources` reads. aac-datasets is imported only then: reading a
prepared root needs neither the package nor the network.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from clapart_core.corpus.manifest import ManifestError
from clapart_core.corpus.sources import (
    AAC_DEFAULTS,
    CLOTHO_SUBSETS,
    DATASET_NAMES,
    audiocaps_paths,
    clotho_paths,
    clotho_splits,
    read_csv_records,
)
from clapart_core.pipeline.errors import UserError
from clapart_core.pipeline.params import SPLITS

__all__ = ["DatasetDownloadError", "download_corpus"]

log = logging.getLogger(__name__)


class DatasetDownloadError(UserError, RuntimeError):
    """A dataset could not be downloaded; the message says what to install or run instead."""


def _clotho_prepared(root: Path, split: str, version: str) -> bool:
    """aac-datasets' own test: the CSV exists and the folder holds as many .wav as it lists."""
    csv_path, audio_dir = clotho_paths(root, split, version)
    if not (csv_path.is_file() and audio_dir.is_dir()):
        return False
    try:
        _header, records = read_csv_records(csv_path, latin1_fallback=True)
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


def _describe_error(err: BaseException) -> str:
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
    if source not in AAC_DEFAULTS:
        raise ValueError(f"cannot download source {source!r}; downloadable sources: {', '.join(AAC_DEFAULTS)}")
    unknown = sorted(set(options) - set(AAC_DEFAULTS[source]))
    if unknown:
        raise ValueError(f"download of {source!r} got unknown option(s) {', '.join(unknown)}")
    opts = {**AAC_DEFAULTS[source], **options}
    root = Path(root)
    pretty = DATASET_NAMES[source]
    if source == "clotho":
        todo = [s for s in clotho_splits(opts["version"]) if not _clotho_prepared(root, s, opts["version"])]
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
            f"data.download: true needs the optional package aac-datasets ({_describe_error(err)}); "
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
                f"downloading {pretty} {split} into {root} failed ({_describe_error(err)}); check that this "
                f"machine can reach the internet, {instead}"
            ) from err
        except RuntimeError as err:  # aac-datasets' checksum and extraction failures
            raise DatasetDownloadError(
                f"aac-datasets could not prepare {pretty} {split} in {root} ({_describe_error(err)}); "
                f"remove the partial files it names and retry, {instead}"
            ) from err

