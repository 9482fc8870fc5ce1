"""Decode store, BEATs / CLAP extraction stage bodies and the k-means frame sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from clapart_core.corpus.decoded import audio_path, decode_split, read_clip
from clapart_core.encoders.beats import num_patches, random_beats
from clapart_core.encoders.beats_extract import extract_beats_features
from clapart_core.encoders.clap import random_clap
from clapart_core.encoders.extract import extract_clap_embeddings, sample_frames
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter

TINY_BEATS = {"encoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "embed_dim": 32}


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """Five clips of different lengths (one shorter than a BEATs patch) decoded at 16 and 48 kHz."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    seconds = [1.0, 2.3, 0.1, 1.7, 3.0]
    rows = []
    for i, s in enumerate(seconds):
        t = np.arange(int(22050 * s)) / 22050
        wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(root / f"c{i}.wav", np.stack([wave, wave * 0.5], 1), 22050, subtype="PCM_16")
        rows.append({"clip_id": f"c{i}", "split": "train", "audio_path": f"c{i}.wav", "captions": ["x"], "duration_s": s})
    manifest = pa.Table.from_pylist(rows)
    out = tmp_path_factory.mktemp("audio")
    report = decode_split(manifest, root, "train", out, [16000, 48000], max_seconds=None, on_error="skip")
    # 0.1 s < one BEATs patch: padded with silence to 0.175 s and flagged, not skipped
    assert report.n_decoded == 5 and not report.skipped and [f["clip_id"] for f in report.flagged] == ["c2"]
    return out, seconds


def test_decode_store_holds_each_rate(decoded):
    out, seconds = decoded
    for sr in (16000, 48000):
        with RaggedReader(audio_path(out, sr, "train")) as r:
            assert r.clip_ids == ["c0", "c1", "c2", "c3", "c4"] and int(r.attrs["sample_rate"]) == sr
            assert r.length("c2") == round(0.175 * sr)  # padded to one BEATs patch
            for i, s in enumerate(seconds):
                if i == 2:
                    continue
                assert r.length(f"c{i}") == -(-int(22050 * s) * sr // 22050)  # ceil(n * sr_out / sr_in)
                wave = read_clip(r, f"c{i}")
                # stereo (1, 0.5) mean-downmixed: peak about 0.75 * 0.3
                assert wave.dtype == np.float32 and 0.2 < np.abs(wave).max() < 0.26


def test_beats_features_do_not_depend_on_batching(decoded, tmp_path):
    out, _ = decoded
    # the decoded clips plus one shorter than a BEATs patch (as a store written by hand could hold)
    audio = tmp_path / "audio.h5"
    with RaggedReader(audio_path(out, 16000, "train")) as src, RaggedWriter(audio, (), np.int16, attrs=src.attrs) as w:
        for cid, pcm in src:
            w.append(cid, pcm)
        w.append("short", np.full(1600, 1000, np.int16))
    model = random_beats(TINY_BEATS, seed=3)
    one, many = tmp_path / "b1.h5", tmp_path / "b4.h5"
    extract_beats_features(model, audio, one, batch_size=1)
    extract_beats_features(model, audio, many, batch_size=4)
    with RaggedReader(one) as a, RaggedReader(many) as b, RaggedReader(audio) as audio:
        assert sorted(a.clip_ids) == sorted(b.clip_ids) == sorted([f"c{i}" for i in range(5)] + ["short"])
        for cid in a.clip_ids:
            assert a.length(cid) == num_patches(audio.length(cid))
            np.testing.assert_allclose(a[cid].astype(np.float32), b[cid].astype(np.float32), atol=2e-2, rtol=0)
        assert a.length("short") == 0  # 0.1 s is shorter than one patch: no frames
        assert a.length("c2") == 8  # the decode stage padded its 0.1 s clip to one patch: 8 frequency patches
        assert a["c0"].dtype == np.float16 and a["c0"].shape[1] == 32


def test_clap_embeddings_are_unit_norm_and_batch_free(decoded, tmp_path):
    out, _ = decoded
    enc = random_clap(seed=0)
    extract_clap_embeddings(enc, audio_path(out, 48000, "train"), tmp_path / "c1.h5", batch_size=1)
    extract_clap_embeddings(enc, audio_path(out, 48000, "train"), tmp_path / "c3.h5", batch_size=3)
    with RaggedReader(tmp_path / "c1.h5") as a, RaggedReader(tmp_path / "c3.h5") as b:
        for cid in a.clip_ids:
            assert a[cid].shape == (1, 512)
            assert np.linalg.norm(a[cid][0]) == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(a[cid], b[cid], atol=1e-5)
    with pytest.raises(ValueError, match="needs 48000 Hz"):
        extract_clap_embeddings(enc, audio_path(out, 16000, "train"), tmp_path / "bad.h5", batch_size=1)


def test_sample_frames_is_seeded_and_spans_files(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for f in range(2):
        path = tmp_path / f"f{f}.h5"
        with RaggedWriter(path, (3,), np.float32) as w:
            for c in range(4):
                w.append(f"{f}-{c}", np.full((10, 3), 100 * f + c, np.float32) + rng.random((10, 3), np.float32) * 0.1)
        files.append(path)
    a = sample_frames(files, 30, seed=5)
    b = sample_frames(files, 30, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (30, 3) and not np.array_equal(a, sample_frames(files, 30, seed=6))
    assert (a[:, 0] >= 100).any() and (a[:, 0] < 100).any()  # rows from both files
    assert sample_frames(files, 1000, seed=5).shape == (80, 3)  # capped at what exists


def test_beats_layer_is_part_of_the_features_spec_and_rebuilt_from_it(decoded, tmp_path):
    """beats.layer goes into the features spec (configure -> features.json -> the file's attrs and the
    token metadata), so `tokenize` and `clapart caption` rebuild the same layer; an earlier layer
    gives other features (layer 1 of 2 here)."""
    import json

    import torch
    import yaml

    from clapart_core.encoders.registry import encoder_from_spec, token_type
    from clapart_core.pipeline.config import resolve

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["beats"]["random"] = {**TINY_BEATS, "encoder_layers": 2}
    assert resolve(params)["features"]["encoder"]["layer"] is None  # the default: the last layer
    params["beats"]["layer"] = 1
    spec = token_type("beats_rvq").features_config(params)["encoder"]
    assert spec["layer"] == 1 and resolve(params)["features"]["encoder"] == spec
    out, _ = decoded
    audio = audio_path(out, 16000, "train")
    first = encoder_from_spec("beats_rvq", spec)
    last = encoder_from_spec("beats_rvq", {**spec, "layer": None})
    first.extract(audio, tmp_path / "l1.h5", batch_size=2)
    last.extract(audio, tmp_path / "last.h5", batch_size=2)
    with RaggedReader(tmp_path / "l1.h5") as a, RaggedReader(tmp_path / "last.h5") as b, RaggedReader(audio) as wav:
        assert json.loads(a.attrs["spec"])["layer"] == 1 and json.loads(b.attrs["spec"])["layer"] is None
        assert not np.array_equal(a["c4"], b["c4"])
        # what raw-audio captioning rebuilds from the recorded spec gives the stored features' codes
        rebuilt = encoder_from_spec("beats_rvq", json.loads(a.attrs["spec"]))
        wave = torch.from_numpy(read_clip(wav, "c4"))[None]
        feats, _ = rebuilt.model.extract_features(wave, layer=rebuilt.spec["layer"])
        np.testing.assert_allclose(feats[0].numpy().astype(np.float16).astype(np.float32), a["c4"].astype(np.float32), atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="beats.layer=3 is not a layer of this BEATs model: use 1..2"):
        encoder_from_spec("beats_rvq", {**spec, "layer": 3})
