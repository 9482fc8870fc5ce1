"""The generic part of the extraction stages: run an encoder over a decoded-audio file clip by
clip, resumably, into one output file; the CLAP embeddings are this module's own stage body, and
the frame sampling the codebook fit uses lives here too. Every body streams (memory does not grow
with the corpus), writes one ragged HDF5 file or token Parquet (:mod:`clapart_core.pipeline.storage`)
and resumes after a kill (:mod:`clapart_core.pipeline.resume`).

BEATs' length-bucketed batching is in :mod:`clapart_core.encoders.beats_extract`, so that the clap
and codebooks stages, which import this module, do not import BEATs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.corpus.decoded import read_clip
from clapart_core.pipeline.resume import ShardedRun, file_digest, plan_groups
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter, model_fingerprint

log = logging.getLogger(__name__)

# Token Parquet stores codes as int16.
MAX_CODEBOOK_SIZE = 2**15


def parts_path(out: Path) -> Path:
    """Default resume work directory of an output file: ``{out}.parts`` next to it."""
    return out.with_name(out.name + ".parts")


def check_rate(reader: RaggedReader, audio_h5: Path, needed: int, what: str) -> None:
    """Refuse a decoded-audio file whose rate is not the ``needed`` Hz that ``what`` reads."""
    have = int(reader.attrs["sample_rate"])
    if have != needed:
        raise ValueError(f"{audio_h5} holds {have} Hz audio but {what} needs {needed} Hz: rerun decode for this encoder.type (dvc repro)")


def extract_clap_embeddings(
    encoder: Any,
    audio_h5: Path,
    out_h5: Path,
    *,
    batch_size: int,
    attrs: dict[str, Any] | None = None,
    work_dir: Path | None = None,
    keep_shards: bool = False,
) -> int:
    """CLAP audio embedding per clip: ``[S] @ 48 kHz -> [1, E]`` float32, L2-normalised.

    Resumable: finished groups of batches are kept in ``work_dir`` (default ``{out_h5}.parts``), and a
    rerun after a kill computes only the missing groups; the shards are removed once ``out_h5`` is
    written, unless ``keep_shards`` (the caller removes them).
    """
    audio_h5, out_h5 = Path(audio_h5), Path(out_h5)
    with RaggedReader(audio_h5) as reader:
        if int(reader.attrs["sample_rate"]) != encoder.sample_rate:
            raise ValueError(
                f"{audio_h5} holds {reader.attrs['sample_rate']} Hz audio but the CLAP model needs {encoder.sample_rate} Hz: "
                "rerun decode (dvc repro), which writes the rates the configured encoders need"
            )
        info = {"sample_rate": encoder.sample_rate, "dtype": "float32", "dim": encoder.dim, **(attrs or {})}
        ids = reader.clip_ids
        batches = [range(start, min(start + batch_size, len(ids))) for start in range(0, len(ids), batch_size)]

        def compute(group: Sequence[Sequence[int]]) -> Iterator[tuple[str, np.ndarray]]:
            for index in group:
                batch = [ids[i] for i in index]
                emb = encoder.embed([read_clip(reader, c) for c in batch], batch)
                for clip_id, e in zip(batch, emb, strict=True):
                    yield clip_id, np.asarray(e, dtype=np.float32)[None, :]

        device = str(next(encoder.model.parameters()).device)
        key = {"kind": "clap_embeddings", "weights": model_fingerprint(encoder.model), "attrs": info, "batch_size": batch_size, "device": device}
        key |= {"input": file_digest(audio_h5), "torch": torch.__version__}
        shards = ShardedRun(work_dir or parts_path(out_h5), key, ids, plan_groups(batches), compute, f"clap {audio_h5.stem}", keep_shards)
        with shards as items, RaggedWriter(out_h5, (encoder.dim,), np.float32, attrs=info) as writer:
            for clip_id, e in items:
                writer.append(clip_id, e)
    return len(ids)


def iter_features(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Stream ``(clip_id, [T, D] float32)`` from a features file in file order."""
    with RaggedReader(path) as reader:
        for clip_id, arr in reader:
            yield clip_id, arr.astype(np.float32)


def sample_frames(paths: Sequence[Path], max_samples: int, seed: int) -> np.ndarray:
    """A seeded uniform sample (without replacement) of feature rows across files: ``[M, D]`` float32.

    The sample is a function of (file contents, ``max_samples``, ``seed``) only.
    """
    readers = [RaggedReader(p) for p in paths]
    try:
        totals = [int(r.offsets[-1]) for r in readers]
        total = sum(totals)
        if total == 0:
            raise ValueError(f"no feature frames in {[str(p) for p in paths]}")
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(total, size=min(max_samples, total), replace=False))
        parts, start = [], 0
        for reader, n in zip(readers, totals, strict=True):
            local = take[(take >= start) & (take < start + n)] - start
            if len(local):
                parts.append(reader.rows(local).astype(np.float32))
            start += n
        return np.concatenate(parts)
    finally:
        for r in readers:
            r.close()
