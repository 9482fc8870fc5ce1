"""The decode stage's store: every clip as mono int16 PCM at the rates the encoders need,
one ragged HDF5 file per (rate, split): ``data/audio/sr{rate}/{split}.h5``.

int16 keeps 16-bit sources exact (BEATs scales by 2^15 anyway) at half the bytes of fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from clapart_core.storage import RaggedReader, RaggedWriter

PCM_SCALE = 32767.0


def audio_path(out_dir: Path, sample_rate: int, split: str) -> Path:
    """Where ``decode`` puts one split at one rate: ``{out_dir}/sr{rate}/{split}.h5``."""
    return Path(out_dir) / f"sr{sample_rate}" / f"{split}.h5"


def decode_split(
    manifest: pa.Table, root: Path, split: str, out_dir: Path, sample_rates: Sequence[int], max_seconds: float | None
) -> int:
    """Decode one split's clips to mono int16 PCM at each rate (one ragged file per rate).

    Returns the number of clips written.
    """
    # imported here so that stages which only *read* decoded audio do not depend on the decoders
    from clapart_core.audio import load_audio
    from clapart_core.datasets import resolve_audio_path

    rows = manifest.filter(pc.equal(manifest["split"], split)).to_pylist()
    with contextlib.ExitStack() as stack:
        writers = {
            sr: stack.enter_context(
                RaggedWriter(audio_path(out_dir, sr, split), (), np.int16, attrs={"sample_rate": sr, "scale": PCM_SCALE, "split": split})
            )
            for sr in sample_rates
        }
        for row in tqdm(rows, desc=f"decode {split}", unit="clip"):
            path = resolve_audio_path(root, row["audio_path"])
            for sr, writer in writers.items():
                wave = load_audio(path, sr, max_seconds=max_seconds)
                writer.append(row["clip_id"], np.round(np.clip(wave, -1.0, 1.0) * PCM_SCALE).astype(np.int16))
    return len(rows)




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
