"""Artifact read speed: ragged HDF5 features and token Parquet against reading the same bytes
from a raw file, in the access patterns of the stages that read them.

Generated BEATs-shaped features (10 s clips: T = 496 frames, D = 768, fp16 as the features
stage stores them) are written with :class:`RaggedWriter` and, byte for byte, as one raw
``.bin`` file; the codes (``[T, 16]`` int16) with :func:`write_tokens` and as raw int16. Reads
run from the page cache (both files were just written), so the figures measure each format's
CPU cost, which is what remains once the disk is fast; every HDF5 / Parquet read is interleaved
with its raw baseline. Patterns:

* ``stream``: every clip in file order (tokenize's :func:`iter_features`), vs ``np.fromfile``
  of the raw file in the reader's blocks (the same fresh arrays); the note adds the same blocks
  read as h5py slices (the reader before direct chunk reads) and the ceiling of any reader,
  4 MiB ``readinto`` one reused buffer;
* ``by_clip``: ``reader[clip_id]`` for every clip in shuffled order (per-clip loaders), vs
  slices of a ``np.memmap`` copied out in the same order;
* ``sample``: :meth:`RaggedReader.rows` of a 10 % random row sample (the codebooks stage's
  frame sample), vs fancy indexing of the memmap;
* ``tokens``: :func:`read_tokens` (the training loader), vs the raw int16 codes.

    python -m bench.bench_storage [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import line, measure
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter, read_tokens, write_tokens

FRAMES, DIM, CODEBOOKS = 496, 768, 16


def _write(root: Path, clips: int, rng: np.random.Generator) -> tuple[Path, Path, Path, Path, np.ndarray, list[str]]:
    """Write features (HDF5 + raw) and tokens (Parquet + raw) for ``clips`` 10 s clips."""
    ids = [f"clip{i:05d}" for i in range(clips)]
    offsets = np.arange(clips + 1, dtype=np.int64) * FRAMES
    h5, raw = root / "features.h5", root / "features.bin"
    with RaggedWriter(h5, (DIM,), np.float16) as writer, raw.open("wb") as f:
        for clip_id in ids:
            feats = rng.standard_normal((FRAMES, DIM), dtype=np.float32).astype(np.float16)
            writer.append(clip_id, feats)
            f.write(feats.tobytes())
    codes = [rng.integers(0, 1024, (FRAMES, CODEBOOKS)).astype(np.int16) for _ in ids]
    parquet, raw_codes = root / "tokens.parquet", root / "tokens.bin"
    write_tokens(parquet, zip(ids, codes, strict=True), {"num_codebooks": CODEBOOKS, "codebook_size": 1024})
    np.concatenate(codes).tofile(raw_codes)
    return h5, raw, parquet, raw_codes, offsets, ids


def main(quick: bool = False) -> Iterator[str]:
    """Yield the storage lines; ``quick``: 48 clips (37 MB of features), one timed repetition."""
    clips = 48 if quick else 384
    reps = 1 if quick else 3
    rng = np.random.default_rng(0)
    tag = "_quick" if quick else ""
    with tempfile.TemporaryDirectory(prefix="clapart-bench-storage-") as tmp:
        h5, raw, parquet, raw_codes, offsets, ids = _write(Path(tmp), clips, rng)
        rows = int(offsets[-1])
        feature_mb = rows * DIM * 2 / 1e6
        order = rng.permutation(clips)
        sample = np.sort(rng.choice(rows, rows // 10, replace=False))
        reader = RaggedReader(h5)
        memmap = np.memmap(raw, dtype=np.float16, mode="r", shape=(rows, DIM))

        def stream_h5() -> None:
            for _ in reader:
                pass

        block_rows = reader.data.chunks[0] * 16  # RaggedReader.__iter__ reads 16 chunks at a time

        def stream_raw() -> None:
            # the same output as the reader: one fresh array per block of rows, clips as views
            with raw.open("rb") as f:
                for start in range(0, rows, block_rows):
                    np.fromfile(f, dtype=np.float16, count=min(block_rows, rows - start) * DIM).reshape(-1, DIM)

        def memcpy_ceiling() -> None:
            # the fastest plain read: 4 MiB blocks into one reused buffer (no page faults, no output)
            buf = bytearray(4 << 20)
            with raw.open("rb", buffering=0) as f:
                while f.readinto(buf):
                    pass

        def stream_h5_slices() -> None:
            # the reader's previous block read: an h5py slice per block (two copies per byte)
            i = 0
            while i < clips:
                j = min(i + max(1, block_rows // FRAMES), clips)
                reader.data[offsets[i] : offsets[j]]
                i = j

        def by_clip_h5() -> None:
            for i in order:
                reader[ids[i]]

        def by_clip_raw() -> None:
            for i in order:
                np.array(memmap[offsets[i] : offsets[i + 1]])

        seconds = measure(
            {
                "stream_h5": stream_h5,
                "stream_raw": stream_raw,
                "stream_ceiling": memcpy_ceiling,
                "stream_h5_slices": stream_h5_slices,
                "by_clip_h5": by_clip_h5,
                "by_clip_raw": by_clip_raw,
                "sample_h5": lambda: reader.rows(sample),
                "sample_raw": lambda: memmap[sample],
                "tokens_parquet": lambda: read_tokens(parquet),
                "tokens_raw": lambda: np.fromfile(raw_codes, dtype=np.int16).reshape(-1, CODEBOOKS),
            },
            reps,
        )
        chunk = f"chunks {reader.data.chunks[0]} rows × {DIM}" if reader.data.chunks else "contiguous"
        reader.close()
        for pattern, mb, what in (
            ("stream", feature_mb, f"all {clips} clips in file order"),
            ("by_clip", feature_mb, f"{clips} clips by id, shuffled"),
            ("sample", len(sample) * DIM * 2 / 1e6, f"{len(sample)} random rows"),
        ):
            h5_rate, raw_rate = mb / seconds[f"{pattern}_h5"], mb / seconds[f"{pattern}_raw"]
            ceiling = ""
            if pattern == "stream":
                sliced = feature_mb / seconds["stream_h5_slices"]
                ceiling = (
                    f"; {h5_rate / sliced:.2f}x h5py slices {sliced:.0f} MB/s"
                    f"; read-into-one-buffer ceiling {feature_mb / seconds['stream_ceiling']:.0f} MB/s"
                )
            yield line(
                f"storage_features_{pattern}{tag}",
                h5_rate,
                "MB/s",
                f"{h5_rate / raw_rate:.2f}x raw file {raw_rate:.0f} MB/s; {what}, fp16 {chunk}, page cache{ceiling}",
            )
        token_mb = rows * CODEBOOKS * 2 / 1e6
        pq_rate, raw_rate = token_mb / seconds["tokens_parquet"], token_mb / seconds["tokens_raw"]
        yield line(
            f"storage_tokens_parquet{tag}",
            clips / seconds["tokens_parquet"],
            "clips/s",
            f"{pq_rate:.0f} MB/s of int16 codes, {pq_rate / raw_rate:.2f}x raw file {raw_rate:.0f} MB/s",
        )


if __name__ == "__main__":
    for text in main(quick="--quick" in sys.argv):
        print(text, flush=True)
