"""Ragged HDF5 and token Parquet formats: round trips, schemas, crash safety; file modes of atomic writes."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clapart_core.corpus.manifest import MANIFEST_SCHEMA, with_metadata, write_manifest
from clapart_core.pipeline.atomic import partial_path
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter, read_tokens, write_tokens
from clapart_core.scoring.metrics import write_scores_json


def test_ragged_round_trip_and_attrs(tmp_path):
    rng = np.random.default_rng(0)
    clips = {f"c{i}": rng.standard_normal((int(rng.integers(0, 50)), 6)).astype(np.float32) for i in range(30)}
    path = tmp_path / "f.h5"
    with RaggedWriter(path, (6,), np.float16, attrs={"encoder": "beats", "cfg": {"d": 6}}, chunk_rows=16) as w:
        for k, v in clips.items():
            w.append(k, v)
    with RaggedReader(path) as r:
        assert r.clip_ids == list(clips)
        assert r.attrs["encoder"] == "beats" and r.attrs["cfg"] == '{"d": 6}'
        for k, v in clips.items():
            np.testing.assert_array_equal(r[k], v.astype(np.float16))
        streamed = dict(r)
        assert list(streamed) == list(clips)
        for k, v in clips.items():
            np.testing.assert_array_equal(streamed[k], v.astype(np.float16))
        flat = np.concatenate(list(clips.values())).astype(np.float16)
        pick = np.array([5, 0, len(flat) - 1, 17, 5])
        np.testing.assert_array_equal(r.rows(pick), flat[pick])


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "f.h5"
    with pytest.raises(RuntimeError):
        with RaggedWriter(path, (2,), np.float32) as w:
            w.append("a", np.zeros((3, 2)))
            raise RuntimeError("killed")
    assert not path.exists() and not partial_path(path).exists()
    with pytest.raises(ValueError, match="row shape"):
        with RaggedWriter(path, (2,), np.float32) as w:
            w.append("a", np.zeros((3, 5)))


def test_tokens_round_trip_schema_and_metadata(tmp_path):
    rng = np.random.default_rng(1)
    items = [(f"clip{i}", rng.integers(0, 1024, size=(int(rng.integers(1, 40)), 4)).astype(np.int16)) for i in range(9)]
    path = tmp_path / "t.parquet"
    meta = {"num_codebooks": 4, "codebook_size": 1024, "rvq_layers": 4, "codebooks_file": "data/codebooks/rvq.npz"}
    assert write_tokens(path, iter(items), meta, batch=4) == 9
    schema = pq.read_schema(path)
    assert schema.field("codes").type == pa.list_(pa.list_(pa.int16()))
    assert schema.field("n_frames").type == pa.int32()
    t = read_tokens(path)
    assert t.clip_ids == [c for c, _ in items] and t.metadata == meta
    for (_, want), got in zip(items, t.codes, strict=True):
        np.testing.assert_array_equal(got, want)
    n_frames = pq.read_table(path).column("n_frames").to_pylist()
    assert n_frames == [c.shape[0] for _, c in items]


def test_tokens_reject_wrong_width(tmp_path):
    with pytest.raises(ValueError, match="expected \\[T, 4\\]"):
        write_tokens(tmp_path / "t.parquet", [("a", np.zeros((3, 2), np.int16))], {"num_codebooks": 4, "codebook_size": 8})
    assert not (tmp_path / "t.parquet").exists()


def test_reader_streams_direct_chunks_and_falls_back_to_slices(tmp_path):
    """Unfiltered chunks are read straight into the block buffer; compressed ones through h5py."""
    import h5py

    rng = np.random.default_rng(3)
    clips = [rng.integers(-3000, 3000, int(rng.integers(0, 900))).astype(np.int16) for _ in range(40)]
    flat = np.concatenate(clips)
    plain = tmp_path / "plain.h5"
    with RaggedWriter(plain, (), np.int16, chunk_rows=100) as w:
        for i, c in enumerate(clips):
            w.append(f"c{i}", c)
    gzip = tmp_path / "gzip.h5"
    with h5py.File(gzip, "w") as f:
        f.create_dataset("data", data=flat, chunks=(100,), maxshape=(None,), compression="gzip")
        f["offsets"] = np.concatenate([[0], np.cumsum([len(c) for c in clips])])
        f.create_dataset("clip_ids", data=np.array([f"c{i}" for i in range(40)], dtype=object), dtype=h5py.string_dtype())
    pick = rng.choice(len(flat), 60)
    for path, direct in ((plain, True), (gzip, False)):
        with RaggedReader(path) as r:
            assert r._direct is direct
            for (_, got), want in zip(r, clips, strict=True):
                np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(r.rows(pick), flat[pick])


def test_manifest_and_scores_get_the_umask_mode(tmp_path):
    """Atomic writes create their temporary file with open(), so the result has the user's umask
    (``tempfile.mkstemp`` made manifests and scores 0600, unreadable to a group sharing the results)."""
    rows = {"clip_id": ["a"], "split": ["train"], "audio_path": ["a.wav"], "captions": [["a dog barks"]], "duration_s": [1.0]}
    table = with_metadata(pa.table(rows, schema=MANIFEST_SCHEMA), root="corpus", source="folder", report=None)
    old = os.umask(0o027)
    try:
        write_manifest(table, tmp_path / "data/manifest.parquet")
        write_scores_json({"cider_d": 0.5}, tmp_path / "metrics/scores.json")
    finally:
        os.umask(old)
    for path in (tmp_path / "data/manifest.parquet", tmp_path / "metrics/scores.json"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o640), path
        assert not partial_path(path).exists()
