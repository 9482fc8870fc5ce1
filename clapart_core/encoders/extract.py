"""Stage bodies that turn decoded audio into encoder outputs: BEATs patch features and CLAP
embeddings, plus the frame sampling the codebook fit uses. Each function streams clip by clip
(memory does not grow with the corpus) and writes one ragged HDF5 file
(:mod:`clapart_core.pipeline.storage`); the extractions resume after a kill (:mod:`clapart_core.pipeline.resume`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.corpus.decoded import read_batch, read_clip
from clapart_core.pipeline.resume import ShardedRun, file_digest, plan_groups
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter, model_fingerprint

log = logging.getLogger(__name__)

BEATS_SAMPLE_RATE = 16_000


def length_buckets(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Group clip indices into batches of similar length (sorted, stable), so padding is small."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def extract_beats_features(
    model: torch.nn.Module,
    audio_h5: Path,
    out_h5: Path,
    *,
    batch_size: int,
    device: str = "cpu",
    bf16: bool = False,
    attrs: dict[str, Any] | None = None,
    work_dir: Path | None = None,
    keep_shards: bool = False,
) -> int:
    """BEATs patch features for every clip of one split: ``[S] -> [T, D]`` fp16, ``T = 8·⌊F/16⌋``.

    Clips are batched by length; each clip keeps only its own valid patches, so its features
    equal the clip run alone (the encoder masks per clip, see :mod:`clapart_core.encoders.beats`).
    Clips shorter than one patch (0.175 s) get ``T = 0`` rows.

    Resumable: finished groups of batches are kept in ``work_dir`` (default ``{out_h5}.parts``;
    :mod:`clapart_core.pipeline.resume`), and a rerun after a kill computes only the missing groups. The
    shards are removed once ``out_h5`` is written, unless ``keep_shards`` (the caller removes them).
    """
    audio_h5, out_h5 = Path(audio_h5), Path(out_h5)
    reader = RaggedReader(audio_h5)
    dim = int(model.config.encoder_embed_dim)
    model = model.to(device).eval()
    autocast_dtype = torch.bfloat16 if bf16 else None
    info = {"sample_rate": BEATS_SAMPLE_RATE, "frame_rate_hz": 100 / 16 * 8, "dtype": "float16", **(attrs or {})}

    def run(wave: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        out, _ = model.extract_features(wave.to(device), padding_mask=mask.to(device), autocast_dtype=autocast_dtype)
        return out.float().cpu().numpy()

    # everything the features depend on: batching changes rounding, so batch_size is part of it
    key = {"kind": "beats_features", "weights": model_fingerprint(model), "attrs": info, "batch_size": batch_size, "device": str(device), "bf16": bf16}
    with reader:
        empty = np.zeros((0, dim), np.float16)
        shards = per_patch_outputs(reader, run, batch_size, empty, f"beats {audio_h5.stem}", key, work_dir or parts_path(out_h5), np.float16, keep_shards)
        with shards as items, RaggedWriter(out_h5, (dim,), np.float16, attrs=info) as writer:
            for clip_id, feats in items:
                writer.append(clip_id, feats)
    return len(reader)


def parts_path(out: Path) -> Path:
    """Default resume work directory of an output file: ``{out}.parts`` next to it."""
    return out.with_name(out.name + ".parts")


def per_patch_outputs(
    reader: RaggedReader,
    run: Callable[[torch.Tensor, torch.Tensor], np.ndarray],
    batch_size: int,
    empty: np.ndarray,
    desc: str,
    key: dict[str, Any],
    work_dir: Path,
    dtype: np.dtype | type,
    keep: bool = False,
) -> ShardedRun:
    """Run a BEATs-family model over a 16 kHz decoded-audio file in length buckets and yield each
    clip's own valid patches, ``(clip_id, out[:T])`` with ``T = 8·⌊F/16⌋``, in bucket order, cast
    to ``dtype``; resumable (a :class:`ShardedRun` over ``work_dir``, use it as a context manager).

    ``run(wave [B, S], padding_mask [B, S]) -> [B, N, ...]`` (per-clip masking, so a row equals
    the clip alone). Clips shorter than one patch yield ``empty`` (``T = 0``).
    """
    from clapart_core.encoders.beats import num_patches

    lengths = np.diff(reader.offsets)
    groups = plan_groups(length_buckets(lengths, batch_size), lengths)

    def compute(group: Sequence[Sequence[int]]) -> Iterator[tuple[str, np.ndarray]]:
        with torch.inference_mode():
            for index in group:
                index = np.asarray(index)
                valid = [num_patches(int(lengths[i])) for i in index]
                runnable = [k for k, v in enumerate(valid) if v > 0]
                outs: dict[int, np.ndarray] = {}
                if runnable:
                    out = run(*read_batch(reader, index[runnable]))
                    outs = {k: out[row, : valid[k]].astype(dtype) for row, k in enumerate(runnable)}
                for k, i in enumerate(index):
                    yield reader.clip_ids[i], outs.get(k, empty)

    key = {**key, "input": file_digest(reader.path), "torch": torch.__version__}  # a torch upgrade can move rounding
    return ShardedRun(work_dir, key, reader.clip_ids, groups, compute, desc, keep)


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

    Resumable like :func:`extract_beats_features` (``work_dir``, ``keep_shards``).
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
        key = {"kind": "clap_embeddings", "weights": model_fingerprint(encoder.model), "attrs": info, "batch_size": batch_size, "device": device, "input": file_digest(audio_h5), "torch": torch.__version__}
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
