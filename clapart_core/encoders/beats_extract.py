"""Stage bodies of the BEATs family: BEATs patch features and BEATs acoustic-tokenizer codes.

Both run the encoder over length-bucketed batches of a 16 kHz decoded-audio file (padding stays
small) and keep each clip's own valid patches, ``T = 8·⌊F/16⌋`` time-major: the encoder masks
per clip (``padding_semantics="alone"`` in :mod:`clapart_core.encoders.beats`), so a clip's
outputs equal the clip run alone. Clips are written in the stable length order of
:func:`length_buckets`, which does not depend on ``batch_size``; clips shorter than one patch
(0.175 s) get ``T = 0``. Resumable after a kill (:mod:`clapart_core.pipeline.resume`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.corpus.decoded import read_batch
from clapart_core.encoders.beats import num_patches
from clapart_core.encoders.extract import MAX_CODEBOOK_SIZE, check_rate, parts_path
from clapart_core.encoders.spec import BEATS_PATCH_RATE_HZ, BEATS_SAMPLE_RATE
from clapart_core.pipeline.resume import ShardedRun, file_digest, plan_groups
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter, model_fingerprint, write_tokens


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
    layer: int | None = None,
) -> int:
    """BEATs patch features for every clip of one split: ``[S] -> [T, D]`` fp16, ``T = 8·⌊F/16⌋``,
    of Transformer layer ``layer`` (1-based; None = the last, see ``BEATs.extract_features``).

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
    info = {"sample_rate": BEATS_SAMPLE_RATE, "frame_rate_hz": BEATS_PATCH_RATE_HZ, "dtype": "float16", **(attrs or {})}

    def run(wave: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        out, _ = model.extract_features(wave.to(device), padding_mask=mask.to(device), autocast_dtype=autocast_dtype, layer=layer)
        return out.float().cpu().numpy()

    # everything the features depend on: batching changes rounding, so batch_size is part of it
    key = {
        "kind": "beats_features", "weights": model_fingerprint(model), "attrs": info, "batch_size": batch_size, "device": str(device), "bf16": bf16,
        "layer": layer,
    }
    with reader:
        empty = np.zeros((0, dim), np.float16)
        shards = per_patch_outputs(reader, run, batch_size, empty, f"beats {audio_h5.stem}", key, work_dir or parts_path(out_h5), np.float16, keep_shards)
        with shards as items, RaggedWriter(out_h5, (dim,), np.float16, attrs=info) as writer:
            for clip_id, feats in items:
                writer.append(clip_id, feats)
    return len(reader)


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


def extract_beats_codes(
    model: torch.nn.Module,
    audio_h5: Path,
    out_parquet: Path,
    *,
    metadata: dict[str, Any],
    batch_size: int = 8,
    device: str = "cpu",
    bf16: bool = False,
    work_dir: Path | None = None,
    keep_shards: bool = False,
) -> int:
    """BEATs acoustic-tokenizer codes for every clip of one 16 kHz decoded-audio file, one token Parquet.

    ``[S] @ 16 kHz -> [T, 1]`` with ``T = 8 * floor(F / 16)`` patches (time-major, as the BEATs
    features), codes in ``[0, quant_n)``; clips shorter than one patch (0.175 s) get ``T = 0``.
    ``metadata`` is the file's whole token metadata
    (:func:`clapart_core.encoders.registry.token_metadata`). Returns the number of clips written.
    Resumable like :func:`extract_beats_features` (``work_dir``, ``keep_shards``).
    """
    audio_h5, out_parquet = Path(audio_h5), Path(out_parquet)
    codebook_size = int(model.config.quant_n)
    if codebook_size > MAX_CODEBOOK_SIZE:
        raise ValueError(f"codebook size {codebook_size} does not fit the token Parquet's int16 codes")
    reader = RaggedReader(audio_h5)
    with reader:
        check_rate(reader, audio_h5, BEATS_SAMPLE_RATE, "the BEATs tokenizer")
        model = model.to(device).eval()
        autocast_dtype = torch.bfloat16 if bf16 else None

        def run(wave: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
            labels = model.extract_labels(wave.to(device), mask.to(device), autocast_dtype=autocast_dtype)
            return labels.cpu().numpy()[:, :, None]  # [B, N, 1]: one codebook

        key = {"kind": "beats_codes", "metadata": metadata, "batch_size": batch_size, "device": str(device), "bf16": bf16}
        empty = np.zeros((0, 1), np.int16)
        work_dir = work_dir or parts_path(out_parquet)
        shards = per_patch_outputs(reader, run, batch_size, empty, f"beats-tokenizer {audio_h5.stem}", key, work_dir, np.int16, keep_shards)
        with shards as items:
            return write_tokens(out_parquet, items, metadata)
