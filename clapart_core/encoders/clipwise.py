"""Extraction for encoders that must never pad: only clips of identical length share a forward pass.

HuBERT normalises its first convolution over the whole (padded) time axis, and SpeechTokenizer
ends in a bidirectional LSTM with reflection padding at the clip's own end: in both, zero-padding a
clip changes all of its outputs (:mod:`clapart_core.encoders.hubert`,
:mod:`clapart_core.encoders.speechtokenizer`). Batching clips of exactly the same length is the
same computation as each clip alone (up to float rounding of batched matrix products), and real
corpora (AudioCaps' 10 s clips, the demo's fixed-length clips) are mostly of one length, so
batching still pays.

Clips are processed, and written, in the stable order of their lengths (:func:`equal_length_batches`),
which does not depend on ``batch_size``; each run is resumable (:mod:`clapart_core.pipeline.resume`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.corpus.decoded import read_clip
from clapart_core.pipeline.resume import ShardedRun, file_digest, plan_groups
from clapart_core.pipeline.storage import RaggedReader

#: ``encode(waves)``: equal-length float32 clips ``[S]`` in [-1, 1] -> one array ``[T_i, ...]`` each
Encode = Callable[[list[np.ndarray]], list[np.ndarray]]


def equal_length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Clip indices in stable length order, cut into batches of at most ``batch_size`` clips that all
    have the same length. The order of the clips does not depend on ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and end - start < batch_size and lengths[order[end]] == lengths[order[start]]:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def clip_outputs(
    reader: RaggedReader,
    encode: Encode,
    *,
    batch_size: int,
    min_samples: int,
    empty: np.ndarray,
    desc: str,
    key: dict[str, Any],
    work_dir: Path,
    keep: bool = False,
) -> ShardedRun:
    """Run ``encode`` over a decoded-audio file in batches of equal-length clips; resumable.

    Yields ``(clip_id, array)`` in the order of :func:`equal_length_batches` (a :class:`ShardedRun`:
    use it as a context manager). Clips shorter than ``min_samples`` are not encoded and yield
    ``empty`` (``T = 0``). ``key`` describes everything the outputs depend on (weights, settings,
    batch size); the input file's digest and the torch version are added here.
    """
    lengths = np.diff(reader.offsets)
    groups = plan_groups(equal_length_batches(lengths, batch_size), lengths)

    def compute(group: Sequence[Sequence[int]]) -> Iterator[tuple[str, np.ndarray]]:
        with torch.inference_mode():
            for batch in group:
                ids = [reader.clip_ids[i] for i in batch]
                if int(lengths[batch[0]]) < min_samples:  # every clip of a batch has this length
                    yield from ((cid, empty) for cid in ids)
                    continue
                outs = encode([read_clip(reader, cid) for cid in ids])
                yield from zip(ids, outs, strict=True)

    key = {**key, "input": file_digest(reader.path), "torch": torch.__version__}  # a torch upgrade can move rounding
    return ShardedRun(work_dir, key, reader.clip_ids, groups, compute, desc, keep)
