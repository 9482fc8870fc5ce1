"""The decode stage's store: every clip as mono int16 PCM at the rates the encoders need,
one ragged HDF5 file per (rate, split): ``data/audio/sr{rate}/{split}.h5``.

int16 keeps 16-bit sources exact (BEATs scales by 2^15 anyway) at half the bytes of fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from clapart_core.pipeline.errors import UserError
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter

PCM_SCALE = 32767.0


def audio_path(out_dir: Path, sample_rate: int, split: str) -> Path:
    """Where ``decode`` puts one split at one rate: ``{out_dir}/sr{rate}/{split}.h5``."""
    return Path(out_dir) / f"sr{sample_rate}" / f"{split}.h5"


class ClipDecodeError(UserError, RuntimeError):
    """``decode.on_error: fail`` met a clip it cannot use; the message is one line."""


@dataclass
class DecodeReport:
    """What did not reach the features, and what reached them altered: ``metrics/decode.json``.

    ``skipped``: every clip of the corpus CSVs left out, whichever stage left it out (the corpus
    stage: ``missing``, ``empty``, ``unreadable``, ...; this one: ``non_finite``, ...), each
    ``{clip_id, split, path, reason, stage}``. ``flagged``: clips kept but altered or suspicious
    (``cropped``, ``truncated``, ``padded``, ``silent``), one entry per reason. ``n_clips``
    counts the CSV rows, so ``n_clips == n_decoded + n_skipped``.
    """

    on_error: str
    n_clips: int = 0
    n_decoded: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    flagged: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "on_error": self.on_error,
            "n_clips": self.n_clips,
            "n_decoded": self.n_decoded,
            "n_skipped": len(self.skipped),
            "n_flagged": len(self.flagged),
            "skipped": self.skipped,
            "flagged": self.flagged,
        }


#: the one reason the corpus stage's ``data.strict`` decides alone: a file named in a CSV that is not on disk
#: (AudioCaps always misses some YouTube clips); every other unusable file follows ``decode.on_error``
_STRICT_ONLY = "missing"


def _unusable(clip_id: str, path: Path | str, detail: str, reason: str) -> ClipDecodeError:
    return ClipDecodeError(f"clip {clip_id!r} ({path}): {detail} [{reason}]; set decode.on_error: skip to leave such clips out")


def merge_corpus_drops(manifest: pa.Table, root: Path, report: DecodeReport) -> DecodeReport:
    """Add the clips the corpus stage left out (the manifest's report) to ``report``'s ``skipped``.

    Under ``on_error="fail"`` the first of them that exists but cannot be used (empty, not audio,
    an unsupported rate, ...) raises :class:`ClipDecodeError` before anything is decoded; a
    missing file is only listed, because ``data.strict`` already decided about those.
    """
    from clapart_core.corpus.manifest import corpus_left_out, resolve_audio_path

    for entry in corpus_left_out(manifest):
        path = resolve_audio_path(root, entry["audio_path"])
        if report.on_error == "fail" and entry["reason"] != _STRICT_ONLY:
            raise _unusable(entry["clip_id"], path, entry["detail"], entry["reason"])
        report.n_clips += 1
        report.skipped.append(
            {"clip_id": entry["clip_id"], "split": entry["split"], "path": str(path), "reason": f"{entry['reason']}: {entry['detail']}", "stage": "corpus"}
        )
    return report


def riff_truncated(path: Path) -> bool:
    """True if a RIFF/WAV file's ``data`` chunk claims more bytes than the file holds.

    libsndfile quietly shortens such a file to what is there, so its frame count alone cannot
    tell a truncated download from a short recording.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return False
        size = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return False
            cid, n = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"data":
                return n != 0xFFFFFFFF and f.tell() + n > size
            f.seek(n + (n & 1), 1)


def decode_clip(path: Path, sample_rates: Sequence[int], max_seconds: float | None) -> tuple[dict[int, np.ndarray], list[str]]:
    """Decode one file at every rate; returns the waves and the reasons to flag it (may be empty).

    A clip shorter than one BEATs patch is padded with silence to it
    (:func:`clapart_core.corpus.audio.pad_to_min_length`) and flagged ``padded``.

    Raises:
        AudioDecodeError: the file cannot be used (missing, empty, unreadable, non-finite, bad
            channel count or rate).
    """
    from clapart_core.corpus.audio import MIN_CLIP_SECONDS, audio_info, load_audio, pad_to_min_length

    sr_file, _, frames = audio_info(path)
    duration = frames / sr_file
    waves = {sr: load_audio(path, sr, max_seconds=max_seconds) for sr in sample_rates}
    flags = []
    if max_seconds is not None and duration > max_seconds:
        flags.append(f"cropped: {duration:.2f} s is longer than decode.max_seconds={max_seconds:g}, kept the first {max_seconds:g} s")
    sr0 = sample_rates[0]
    if riff_truncated(path):
        flags.append(f"truncated: the file ends inside its audio data; kept the {len(waves[sr0]) / sr0:.2f} s that could be read")
    kept_seconds = len(waves[sr0]) / sr0
    padded = {sr: pad_to_min_length(wave, sr) for sr, wave in waves.items()}
    if any(was_padded for _, was_padded in padded.values()):
        waves = {sr: wave for sr, (wave, _) in padded.items()}
        flags.append(f"padded: {kept_seconds:.3f} s is shorter than one BEATs patch; silence appended to {MIN_CLIP_SECONDS:.3f} s")
    if not np.any(waves[sr0]):
        flags.append("silent: every sample is zero")
    return waves, flags


def decode_split(
    manifest: pa.Table,
    root: Path,
    split: str,
    out_dir: Path,
    sample_rates: Sequence[int],
    max_seconds: float | None,
    on_error: str = "fail",
    report: DecodeReport | None = None,
) -> DecodeReport:
    """Decode one split's clips to mono int16 PCM at each rate (one ragged file per rate).

    ``on_error="fail"`` raises :class:`ClipDecodeError` (one line naming clip, file and problem)
    at the first unusable clip, before any file is completed; ``"skip"`` leaves the clip out of
    every rate's file and records it in the report. Clips that are kept altered or suspicious
    (padded, cropped, truncated, all-zero) are flagged in both modes. The clips the corpus stage
    left out are added by :func:`merge_corpus_drops`.
    """
    # imported here so that stages which only *read* decoded audio do not depend on the decoders
    from clapart_core.corpus.audio import AudioDecodeError
    from clapart_core.corpus.manifest import resolve_audio_path

    if on_error not in ("fail", "skip"):
        raise ValueError(f"decode.on_error must be 'fail' or 'skip', got {on_error!r}")
    report = report or DecodeReport(on_error)
    rows = manifest.filter(pc.equal(manifest["split"], split)).to_pylist()
    with contextlib.ExitStack() as stack:
        writers = {
            sr: stack.enter_context(
                RaggedWriter(audio_path(out_dir, sr, split), (), np.int16, attrs={"sample_rate": sr, "scale": PCM_SCALE, "split": split})
            )
            for sr in sample_rates
        }
        for row in tqdm(rows, desc=f"decode {split}", unit="clip"):
            report.n_clips += 1
            path = resolve_audio_path(root, row["audio_path"])
            try:
                waves, flags = decode_clip(path, sample_rates, max_seconds)
            except AudioDecodeError as err:
                if on_error == "fail":
                    raise _unusable(row["clip_id"], path, err.detail, err.reason) from None
                reason = f"{err.reason}: {err.detail}"
                report.skipped.append({"clip_id": row["clip_id"], "split": split, "path": str(path), "reason": reason, "stage": "decode"})
                continue
            report.flagged += [{"clip_id": row["clip_id"], "split": split, "path": str(path), "reason": f} for f in flags]
            for sr, writer in writers.items():
                writer.append(row["clip_id"], np.round(np.clip(waves[sr], -1.0, 1.0) * PCM_SCALE).astype(np.int16))
            report.n_decoded += 1
    return report


def read_batch(reader: RaggedReader, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips ``index`` of a decoded-audio file as a right-padded float batch.

    Returns ``wave [B, S]`` float32 in [-1, 1] and ``padding_mask [B, S]`` bool (True = padding).
    """
    clips = [reader[reader.clip_ids[i]].astype(np.float32) / PCM_SCALE for i in index]
    lengths = torch.tensor([len(c) for c in clips])
    wave = torch.zeros(len(clips), int(lengths.max()))
    for row, clip in enumerate(clips):
        wave[row, : len(clip)] = torch.from_numpy(clip)
    return wave, torch.arange(wave.shape[1])[None, :] >= lengths[:, None]


def read_clip(reader: RaggedReader, clip_id: str) -> np.ndarray:
    """One decoded clip as float32 ``[S]`` in [-1, 1]."""
    return reader[clip_id].astype(np.float32) / PCM_SCALE
