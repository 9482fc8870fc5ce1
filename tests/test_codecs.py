"""EnCodec and BEATs-tokenizer token types: encoder API, loading, and the token-Parquet stage bodies."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from clapart_core.corpus.decoded import PCM_SCALE, audio_path, read_clip
from clapart_core.encoders.beats import num_patches, random_acoustic_tokenizer
from clapart_core.encoders.clap import ModelNotFoundError
from clapart_core.encoders.encodec import ENCLAP_BANDWIDTH, load_encodec, random_encodec
from clapart_core.encoders.registry import encoder_from_spec
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter, model_fingerprint, read_tokens

# Narrower than the demo default; keeps the real strides (hop 320) and 1024-entry codebooks, so
# 12 kbps still means 16 codebooks.
TINY_ENCODEC = {"num_filters": 2, "hidden_size": 16, "num_lstm_layers": 1}
TINY_TOKENIZER = {
    "encoder_layers": 1,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2,
    "embed_dim": 32,
    "quant_n": 64,
    "quant_dim": 16,
}
SECONDS = [2.0, 0.73, 0.1, 2.0, 1.31]  # two of equal length, one shorter than a BEATs patch


def _clip(seconds: float, sample_rate: int, k: int) -> np.ndarray:
    """A deterministic test clip: a gliding tone with an envelope plus a little noise, float32 [S]."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(k)
    tone = np.sin(2 * np.pi * (200 + 300 * k) * t * (1 + 0.3 * t)) * (0.2 + 0.2 * np.abs(np.sin(2 * np.pi * 1.5 * t)))
    return (tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decode stage's layout for one split at 16 and 24 kHz (int16 PCM, ragged HDF5)."""
    out = tmp_path_factory.mktemp("audio")
    for sr in (16000, 24000):
        with RaggedWriter(audio_path(out, sr, "train"), (), np.int16, attrs={"sample_rate": sr, "scale": PCM_SCALE}) as w:
            for k, s in enumerate(SECONDS):
                w.append(f"c{k}", np.round(_clip(s, sr, k) * PCM_SCALE).astype(np.int16))
    return out


@pytest.fixture(scope="module")
def encodec():
    return random_encodec(TINY_ENCODEC, seed=7)


def test_encodec_codes_shape_range_and_rate(encodec) -> None:
    assert encodec.sample_rate == 24000 and encodec.frame_rate == 75 and encodec.codebook_size == 1024
    assert [encodec.num_codebooks(b) for b in (1.5, 6.0, 12.0, 24.0)] == [2, 8, 16, 32]
    assert encodec.num_codebooks(ENCLAP_BANDWIDTH) == 16
    wave = _clip(2.0, 24000, 3)
    codes = encodec.encode(wave, 12.0)
    assert codes.shape == (150, 16) and codes.dtype == np.int64  # 75 frames per second
    assert codes.min() >= 0 and codes.max() < 1024
    # the seeded codebooks are used, not collapsed onto one entry
    assert len(np.unique(codes[:, 0])) > 10 and len(np.unique(codes[:, 15])) > 10
    # residual VQ is greedy: the 8 codebooks of 6 kbps are the first 8 of 12 kbps
    np.testing.assert_array_equal(encodec.encode(wave, 6.0), codes[:, :8])
    # T = ceil(S / 320), including a partial last hop and an empty clip
    for samples, frames in ((1, 1), (320, 1), (321, 2), (0, 0)):
        assert encodec.num_frames(samples) == frames
        assert encodec.encode(wave[:samples], 12.0).shape == (frames, 16)
    with pytest.raises(ValueError, match="does not support bandwidth 7.0"):
        encodec.num_codebooks(7.0)


def test_random_encodec_is_seeded_and_leaves_the_global_rng_alone(encodec) -> None:
    state = torch.get_rng_state()
    same = random_encodec(TINY_ENCODEC, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    other = random_encodec(TINY_ENCODEC, seed=8)
    assert model_fingerprint(same.model) == model_fingerprint(encodec.model) != model_fingerprint(other.model)
    assert encodec.spec == {"random": TINY_ENCODEC, "seed": 7} and not encodec.pretrained
    wave = _clip(1.0, 24000, 1)
    np.testing.assert_array_equal(same.encode(wave, 12.0), encodec.encode(wave, 12.0))


def test_load_encodec_from_a_saved_directory_gives_identical_codes(encodec, tmp_path: Path) -> None:
    encodec.model.save_pretrained(tmp_path)
    encodec.feature_extractor.save_pretrained(tmp_path)
    loaded = load_encodec(str(tmp_path))  # the code path of a hub id, from a local directory
    assert loaded.pretrained and loaded.spec == {"checkpoint": str(tmp_path)}
    assert model_fingerprint(loaded.model) == model_fingerprint(encodec.model)
    wave = _clip(1.5, 24000, 2)
    np.testing.assert_array_equal(loaded.encode(wave, 12.0), encodec.encode(wave, 12.0))


def test_missing_encodec_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the hub reads HF_HUB_OFFLINE at import, so set the parsed constant too: fails fast, no network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name in ("facebook/encodec_24khz", str(tmp_path / "no_such_model")):
        with pytest.raises(ModelNotFoundError) as err:
            load_encodec(name)
        message = str(err.value)
        assert repr(name) in message and "hf download facebook/encodec_24khz" in message
        assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_incomplete_checkpoint_directory_is_refused(tmp_path: Path) -> None:
    from transformers import BartConfig, BartModel, EncodecFeatureExtractor

    tiny_bart = BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, vocab_size=50)
    BartModel(tiny_bart).save_pretrained(tmp_path)
    EncodecFeatureExtractor().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a complete EnCodec checkpoint"):
        load_encodec(str(tmp_path))


def test_encodec_tokens_parquet_round_trip(encodec, decoded: Path, tmp_path: Path) -> None:
    src = audio_path(decoded, 24000, "train")
    out = tmp_path / "train.parquet"
    # the features stage's path: the registry rebuilds the fixture's codec from its spec
    codec = encoder_from_spec("encodec", {"random": TINY_ENCODEC, "seed": 7, "bandwidth": 12.0})
    assert codec.extract(src, out, batch_size=1, extra={"split": "train"}) == len(SECONDS)
    table = read_tokens(out)
    assert table.clip_ids == [f"c{k}" for k in range(len(SECONDS))]  # file order
    assert table.num_codebooks == 16 and table.codebook_size == 1024
    meta = table.metadata
    assert meta["encoder_type"] == "encodec" and meta["split"] == "train" and meta["frame_rate_hz"] == 75
    assert meta["encoder"] == {
        "name": "encodec",
        "spec": {"random": TINY_ENCODEC, "seed": 7, "bandwidth": 12.0},
        "pretrained": False,
        "weights_sha256": model_fingerprint(encodec.model),
    }
    with RaggedReader(src) as reader:
        for clip_id, codes in zip(table.clip_ids, table.codes, strict=True):
            # every clip is the clip encoded on its own, whatever came before it in the file
            alone = encodec.encode(read_clip(reader, clip_id), 12.0)
            assert codes.dtype == np.int16 and codes.shape == (encodec.num_frames(reader.length(clip_id)), 16)
            np.testing.assert_array_equal(codes, alone)
    # the recorded spec rebuilds the very same weights (what captioning raw audio relies on)
    assert model_fingerprint(encoder_from_spec("encodec", meta["encoder"]["spec"]).weights) == meta["encoder"]["weights_sha256"]
    with pytest.raises(ValueError, match="needs 24000 Hz: rerun decode"):
        codec.extract(audio_path(decoded, 16000, "train"), tmp_path / "x.parquet", batch_size=1)
    assert not (tmp_path / "x.parquet").exists()


def test_beats_tokenizer_tokens_match_each_clip_alone(decoded: Path, tmp_path: Path) -> None:
    model = random_acoustic_tokenizer(TINY_TOKENIZER, seed=5)
    src = audio_path(decoded, 16000, "train")
    spec = {"checkpoint": None, "random": TINY_TOKENIZER, "seed": 5}
    tokenizer = encoder_from_spec("beats_tokenizer", spec)  # the features stage's path: the same seeded weights
    tables = {}
    for batch_size in (1, 3):
        out = tmp_path / f"b{batch_size}.parquet"
        assert tokenizer.extract(src, out, batch_size=batch_size) == len(SECONDS)
        tables[batch_size] = read_tokens(out)
    one, three = tables[1], tables[3]
    assert one.clip_ids == three.clip_ids and sorted(one.clip_ids) == [f"c{k}" for k in range(len(SECONDS))]
    assert one.metadata == three.metadata
    assert one.metadata["encoder_type"] == "beats_tokenizer" and one.num_codebooks == 1 and one.codebook_size == 64
    assert one.metadata["encoder"] == {"name": "beats_tokenizer", "spec": spec, "pretrained": False, "weights_sha256": model_fingerprint(model)}
    with RaggedReader(src) as reader:
        for clip_id, a, b in zip(one.clip_ids, one.codes, three.codes, strict=True):
            n = num_patches(reader.length(clip_id))
            assert a.shape == b.shape == (n, 1)
            np.testing.assert_array_equal(a, b)
            if n:
                alone = model.extract_labels(torch.from_numpy(read_clip(reader, clip_id))[None, :])[0]
                np.testing.assert_array_equal(a[:, 0], alone.numpy())
                assert a.min() >= 0 and a.max() < 64
    assert one.codes[one.clip_ids.index("c2")].shape == (0, 1)  # 0.1 s: shorter than one patch
    with pytest.raises(ValueError, match="needs 16000 Hz: rerun decode"):
        tokenizer.extract(audio_path(decoded, 24000, "train"), tmp_path / "x.parquet", batch_size=8)
