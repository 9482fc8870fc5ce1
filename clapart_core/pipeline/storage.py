"""Artifact formats shared by the stages: ragged HDF5 arrays and token Parquet files.

**Ragged HDF5** (decoded audio, BEATs features, CLAP embeddings). One file holds many clips as
one concatenated array plus offsets::

    /data      [sum_T, *row_shape]   e.g. [sum_T, D] fp16 features, [sum_S] int16 audio
    /offsets   [n + 1] int64         clip i is data[offsets[i]:offsets[i+1]]
    /clip_ids  [n] utf-8 strings
    attrs      encoder name, checkpoint hash, sample/frame rate, dtype, ...

We chose this over one HDF5 dataset per clip because the readers (k-means sampling, tokenize,
the training loader) walk clips in file order: one chunked dataset streams contiguously, while
50k tiny datasets cost a B-tree lookup and a metadata read each (and bloat the file).
Chunks are ``chunk_rows`` rows of the full row width, so reading one clip touches only the
chunks it spans.

Crash safety: writers write through :func:`clapart_core.pipeline.atomic.atomic_path`
(``<name>.partial``, renamed onto the final name only after the offsets and ids are written), so
a killed stage never leaves a file that looks complete.

**Token Parquet**: ``clip_id: string, n_frames: int32, codes: list<list<int16>>`` (``[T, N]``),
with file metadata (``clapart.*`` keys) naming the codebook file and ``rvq.layers``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# partial_path and SPLITS are re-exported: the stages import them with the artifact formats
from clapart_core.pipeline.atomic import PARTIAL_SUFFIX, atomic_path
from clapart_core.pipeline.atomic import partial_path as partial_path
from clapart_core.pipeline.params import SPLITS as SPLITS

if TYPE_CHECKING:
    import torch


class RaggedWriter:
    """Append variable-length arrays ``[T_i, *row_shape]`` to a ragged HDF5 file.

    Use as a context manager; the file appears under ``path`` only when the block exits
    without an exception.

    Args:
        path: final file path.
        row_shape: shape of one row, ``()`` for 1-D signals, ``(D,)`` for features.
        dtype: storage dtype (fp16 features, int16 audio, fp32 embeddings).
        attrs: provenance stored as HDF5 attributes (JSON-encoded when not a scalar/string).
        chunk_rows: rows per HDF5 chunk.
    """

    def __init__(
        self,
        path: Path | str,
        row_shape: tuple[int, ...],
        dtype: np.dtype | str,
        attrs: dict[str, Any] | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.attrs = dict(attrs or {})
        row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        # ~256 KiB chunks: big enough for fast sequential reads, small enough for one clip.
        self.chunk_rows = chunk_rows or max(1, (256 * 1024) // max(row_bytes, 1))
        self._ids: list[str] = []
        self._offsets: list[int] = [0]
        self._file: h5py.File | None = None

    def __enter__(self) -> RaggedWriter:
        self._atomic = atomic_path(self.path)
        self._file = h5py.File(self._atomic.__enter__(), "w")
        self._data = self._file.create_dataset(
            "data",
            shape=(0, *self.row_shape),
            maxshape=(None, *self.row_shape),
            dtype=self.dtype,
            chunks=(self.chunk_rows, *self.row_shape),
        )
        return self

    def append(self, clip_id: str, array: np.ndarray) -> None:
        """Add one clip's ``[T, *row_shape]`` array (cast to the storage dtype)."""
        array = np.asarray(array)
        if array.shape[1:] != self.row_shape:
            raise ValueError(
                f"{self.path}: clip {clip_id!r} has row shape {array.shape[1:]}, "
                f"expected {self.row_shape}"
            )
        start = self._offsets[-1]
        end = start + array.shape[0]
        self._data.resize(end, axis=0)
        self._data[start:end] = array.astype(self.dtype, copy=False)
        self._ids.append(clip_id)
        self._offsets.append(end)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None
        if exc_type is not None:
            self._file.close()
            self._atomic.__exit__(exc_type, exc, tb)  # removes the temporary file
            return
        self._file.create_dataset("offsets", data=np.asarray(self._offsets, dtype=np.int64))
        self._file.create_dataset("clip_ids", data=np.asarray(self._ids, dtype=object), dtype=h5py.string_dtype())
        for key, value in self.attrs.items():
            value = value.item() if isinstance(value, np.generic) else value  # e.g. attrs copied from a reader
            self._file.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
        self._file.close()
        self._atomic.__exit__(None, None, None)  # renames it into place


class RaggedReader:
    """Read a ragged HDF5 file written by :class:`RaggedWriter`.

    Offsets and ids are loaded once (small); clip arrays are read on demand.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist: run the stage that writes it first")
        self._file = h5py.File(self.path, "r")
        missing = {"data", "offsets", "clip_ids"} - set(self._file.keys())
        if missing:
            raise ValueError(f"{self.path} is not a clapart ragged HDF5 file (missing {sorted(missing)})")
        self.data = self._file["data"]
        self.offsets: np.ndarray = self._file["offsets"][()]
        self.clip_ids: list[str] = [s.decode() if isinstance(s, bytes) else s for s in self._file["clip_ids"][()]]
        self._index = {cid: i for i, cid in enumerate(self.clip_ids)}
        self.attrs: dict[str, Any] = dict(self._file.attrs)
        # unfiltered full-width chunks of native byte order can be copied straight from the file
        self._direct = (
            self.data.chunks is not None
            and self.data.chunks[1:] == self.data.shape[1:]
            and self.data.id.get_create_plist().get_nfilters() == 0
            and self.data.dtype.isnative
        )

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._index

    def length(self, clip_id: str) -> int:
        i = self._index[clip_id]
        return int(self.offsets[i + 1] - self.offsets[i])

    def __getitem__(self, clip_id: str) -> np.ndarray:
        i = self._index[clip_id]
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Gather global rows ``[M] -> [M, *row_shape]`` (in the order given).

        h5py point selections are slow for many indices, so this reads each chunk-aligned
        block that holds at least one wanted row, once, and picks from it.
        """
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self.data.shape[1:]), dtype=self.data.dtype)
        block = (self.data.chunks[0] if self.data.chunks else 4096) * 16
        order = np.argsort(index, kind="stable")
        sorted_idx = index[order]
        blocks = sorted_idx // block
        uniq, first = np.unique(blocks, return_index=True)
        for b, lo, hi in zip(uniq, first, [*first[1:], len(blocks)], strict=True):
            sel = np.arange(lo, hi)
            start = int(b) * block
            data = self._read_rows(start, min(start + block, self.data.shape[0]))
            out[order[sel]] = data[sorted_idx[sel] - start]
        return out

    def _read_rows(self, start: int, end: int) -> np.ndarray:
        """Rows ``[start, end)`` as a new array.

        Unfiltered chunks are read whole, each straight into its place in one buffer
        (``read_direct_chunk``): one copy from the page cache where an h5py slice makes two
        (~1.5x faster streaming, bench/bench_storage.py). Otherwise, or if that fails, a slice.
        """
        rows = self.data.chunks[0] if self._direct else 0
        if rows and end > start:
            lo, hi = start // rows * rows, -(-end // rows) * rows
            buf = np.empty((hi - lo, *self.data.shape[1:]), dtype=self.data.dtype)
            flat, step = buf.reshape(-1).view(np.uint8), buf[:rows].nbytes
            try:
                for k, first in enumerate(range(lo, hi, rows)):
                    self.data.id.read_direct_chunk((first,) + (0,) * (buf.ndim - 1), out=flat[k * step : (k + 1) * step])
                return buf[start - lo : end - lo]
            except Exception:  # e.g. a chunk never written: the general path handles it
                pass
        return self.data[start:end]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Stream ``(clip_id, array)`` in file order, reading a few MiB at a time."""
        block_rows = max(self.data.chunks[0] if self.data.chunks else 1, 1) * 16
        i, n = 0, len(self.clip_ids)
        while i < n:
            j = i + 1
            while j < n and self.offsets[j + 1] - self.offsets[i] <= block_rows:
                j += 1
            block = self._read_rows(int(self.offsets[i]), int(self.offsets[j]))
            for k in range(i, j):
                yield self.clip_ids[k], block[self.offsets[k] - self.offsets[i] : self.offsets[k + 1] - self.offsets[i]]
            i = j

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RaggedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- tokens

TOKENS_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("n_frames", pa.int32()),
        ("codes", pa.list_(pa.list_(pa.int16()))),
    ]
)


@dataclass
class TokenTable:
    """Codes of one split: ``codes[i]`` is ``[T_i, N]`` int16 for ``clip_ids[i]``."""

    clip_ids: list[str]
    codes: list[np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_codebooks(self) -> int:
        return int(self.metadata["num_codebooks"])

    @property
    def codebook_size(self) -> int:
        return int(self.metadata["codebook_size"])


def _codes_array(codes: Sequence[np.ndarray]) -> pa.Array:
    """``[T_i, N]`` arrays -> ``list<list<int16>>`` without Python-level loops over frames."""
    n_frames = np.array([c.shape[0] for c in codes], dtype=np.int32)
    widths = np.concatenate([np.full(c.shape[0], c.shape[1], dtype=np.int32) for c in codes]) if codes else np.zeros(0, np.int32)
    values = pa.array(np.concatenate([c.reshape(-1) for c in codes]).astype(np.int16) if codes else np.zeros(0, np.int16))
    inner = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(widths)]).astype(np.int32)), values)
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(n_frames)]).astype(np.int32)), inner)


def write_tokens(path: Path | str, items: Iterable[tuple[str, np.ndarray]], metadata: dict[str, Any], batch: int = 512) -> int:
    """Stream ``(clip_id, codes [T, N])`` pairs into a token Parquet file (atomically).

    ``metadata`` must name ``num_codebooks`` and ``codebook_size``; it is stored as JSON under
    ``clapart.*`` schema-metadata keys. Returns the number of clips written.
    """
    for key in ("num_codebooks", "codebook_size"):
        if key not in metadata:
            raise ValueError(f"token metadata needs {key!r}")
    schema = TOKENS_SCHEMA.with_metadata({f"clapart.{k}": json.dumps(v) for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        return _write_token_batches(tmp, schema, items, metadata, batch)


def _write_token_batches(tmp: Path, schema: pa.Schema, items: Iterable[tuple[str, np.ndarray]], metadata: dict[str, Any], batch: int) -> int:
    n = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        ids: list[str] = []
        codes: list[np.ndarray] = []

        def flush() -> None:
            writer.write_table(
                pa.Table.from_arrays(
                    [pa.array(ids, pa.string()), pa.array([c.shape[0] for c in codes], pa.int32()), _codes_array(codes)],
                    schema=schema,
                )
            )
            ids.clear()
            codes.clear()

        for clip_id, c in items:
            if c.ndim != 2 or c.shape[1] != metadata["num_codebooks"]:
                name = tmp.name.removesuffix(PARTIAL_SUFFIX)
                raise ValueError(f"{name}: codes of {clip_id!r} have shape {c.shape}, expected [T, {metadata['num_codebooks']}]")
            ids.append(clip_id)
            codes.append(c)
            n += 1
            if len(ids) >= batch:
                flush()
        if ids or n == 0:
            flush()
    return n


def read_tokens(path: Path | str) -> TokenTable:
    """Read a token Parquet file into ``[T_i, N]`` int16 arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the tokenize stage first")
    table = pq.read_table(path)
    meta = {k.decode()[len("clapart.") :]: json.loads(v) for k, v in (table.schema.metadata or {}).items() if k.startswith(b"clapart.")}
    n = int(meta["num_codebooks"])
    col = table.column("codes").combine_chunks()
    values = col.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.int16)
    frame_counts = table.column("n_frames").to_numpy()
    bounds = np.concatenate([[0], np.cumsum(frame_counts)]) * n
    codes = [values[bounds[i] : bounds[i + 1]].reshape(-1, n) for i in range(len(frame_counts))]
    return TokenTable(table.column("clip_id").to_pylist(), codes, meta)


def model_fingerprint(model: torch.nn.Module) -> str:
    """Short SHA-256 of all parameters: records in artifacts exactly which weights ran."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
