"""The tokenize stage's body for the types whose codes come from the RVQ codebooks: a features
file ``[T, D]`` per clip -> token Parquet ``[T, N]`` int16 per clip, resumably, in
:class:`clapart_core.pipeline.resume.ShardedRun` groups (so that it also runs sharded over
processes, :func:`clapart_core.pipeline.resume.run_sharded`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.pipeline.resume import ShardedRun, file_digest, plan_groups
from clapart_core.pipeline.storage import RaggedReader, write_tokens
from clapart_core.tokens.rvq import ResidualVQ


def tokenize_features(
    rvq: ResidualVQ, features_h5: Path, out_parquet: Path, metadata: dict[str, Any], *, work_dir: Path, keep_shards: bool = False
) -> int:
    """Quantise every clip of ``features_h5`` (file order) with ``rvq`` into ``out_parquet``; returns the clip count.

    One clip per batch: each clip is encoded on its own, so a clip's codes do not depend on the
    grouping or on which process encoded it. The shard key holds the metadata (which names the
    codebooks and their fit) and the digest of the features file.
    """
    features_h5, out_parquet = Path(features_h5), Path(out_parquet)
    with RaggedReader(features_h5) as reader:
        ids, offsets = reader.clip_ids, reader.offsets

        def compute(group: Sequence[Sequence[int]]) -> Iterator[tuple[str, np.ndarray]]:
            first, stop = group[0][0], group[-1][-1] + 1  # a group is consecutive clips
            block = np.asarray(reader.data[offsets[first] : offsets[stop]], dtype=np.float32)  # [sum T, D]
            for i in range(first, stop):
                feats = block[offsets[i] - offsets[first] : offsets[i + 1] - offsets[first]]
                yield ids[i], rvq.encode(torch.from_numpy(feats)).numpy().astype(np.int16)

        codebooks = rvq.codebooks.numpy()
        key = {"kind": "rvq_tokens", "metadata": metadata, "codebooks": _array_digest(codebooks), "input": file_digest(features_h5), "torch": torch.__version__}
        groups = plan_groups([[i] for i in range(len(ids))])
        with ShardedRun(work_dir, key, ids, groups, compute, f"tokenize {features_h5.stem}", keep_shards) as items:
            return write_tokens(out_parquet, items, metadata)


def _array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
