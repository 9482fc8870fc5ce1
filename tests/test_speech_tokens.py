"""The speech token types of the registry, ``hubert_rvq`` and ``speechtokenizer``, through the
paths the pipeline and ``clapart caption`` take: encoder rebuilt from its spec, a decoded-audio
split extracted as the features stage does, tokens made as tokenize does, and one raw audio file
turned into codes by the model directory's front end (:class:`AudioToCodes`) — which must give
exactly the tokens the model was trained on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clapart_core.captioner.inference import AudioToCodes
from clapart_core.captioner.model_dir import ModelDirError, write_frontend
from clapart_core.corpus.decoded import PCM_SCALE, audio_path, read_clip
from clapart_core.encoders.extract import iter_features
from clapart_core.encoders.hubert import HUBERT_BASE_CONFIG, HUBERT_SAMPLE_RATE, hubert_features, hubert_num_frames
from clapart_core.encoders.registry import SPEECH_SAMPLE_RATE, _hubert_depth, encoder_from_spec, encoder_record, token_metadata, token_type
from clapart_core.encoders.speechtokenizer import PUBLISHED_SPEECHTOKENIZER_CONFIG, SpeechTokenizerConfig, speechtokenizer_codes
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter, model_fingerprint, read_tokens
from clapart_core.tokens.rvq import KMeansConfig, ResidualVQ, fit_residual_codebooks, save_codebooks

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "speechtokenizer"
# HuBERT base's conv geometry (receptive field 400, hop 320: 50 frames/s) at a tiny width. At
# HuBERT's initializer_range of 0.02 a random layer hardly changes its input (layers 1 and 2 differ by
# ~1 %, and give the same codes); at 0.2 they differ by ~90 %, so a wrong layer would show.
TINY_HUBERT = {
    "initializer_range": 0.2,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
HUBERT_SPEC = {"checkpoint": None, "random": TINY_HUBERT, "seed": 3, "layer": 2}
# The published SpeechTokenizer (strides 8-5-4-2: 50 Hz; 8 codebooks of 1024) at a narrow width.
SMALL_ST = {"n_filters": 4, "dimension": 16, "semantic_dimension": 8, "lstm_layers": 1}
ST_SPEC = {"checkpoint": None, "random": SMALL_ST, "seed": 2, "config": None}
# three of equal length (they share batches), odd lengths, and one shorter than HuBERT's 400-sample receptive field
SECONDS = [1.0, 0.55, 1.0, 0.02, 1.0, 0.731]


def _clip(seconds: float, k: int) -> np.ndarray:
    """A gliding tone with an envelope plus a little noise, on the int16 grid the decode stage stores."""
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(k)
    tone = np.sin(2 * np.pi * (150 + 250 * k) * t * (1 + 0.4 * t)) * (0.2 + 0.2 * np.abs(np.sin(2 * np.pi * 2 * t)))
    return (np.round((tone + 0.03 * rng.standard_normal(len(t))) * PCM_SCALE) / PCM_SCALE).astype(np.float32)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decode stage's layout for one split at 16 kHz and 24 kHz (int16 PCM, ragged HDF5)."""
    out = tmp_path_factory.mktemp("audio")
    for sr in (16000, 24000):
        with RaggedWriter(audio_path(out, sr, "train"), (), np.int16, attrs={"sample_rate": sr, "scale": PCM_SCALE}) as w:
            for k, s in enumerate(SECONDS):
                w.append(f"c{k}", np.round(_clip(s, k) * PCM_SCALE).astype(np.int16))
    return out


def _wav(path: Path, wave: np.ndarray) -> Path:
    """A user's file holding exactly ``wave`` (float samples, so nothing is requantised on the way)."""
    sf.write(path, wave, 16000, subtype="FLOAT")
    return path


def test_the_registry_rate_is_the_modules_rate() -> None:
    assert SPEECH_SAMPLE_RATE == HUBERT_SAMPLE_RATE == PUBLISHED_SPEECHTOKENIZER_CONFIG["sample_rate"] == 16000
    hubert, st = token_type("hubert_rvq"), token_type("speechtokenizer")
    assert (hubert.codebooks, hubert.suffix, hubert.sample_rate) == (True, ".h5", 16000)
    assert (st.codebooks, st.suffix, st.sample_rate) == (False, ".parquet", 16000)
    assert SpeechTokenizerConfig().frame_rate == 50.0
    # configure's torch-free depth of the random HuBERT is the module's base configuration
    assert _hubert_depth(None, None) == HUBERT_BASE_CONFIG["num_hidden_layers"] and _hubert_depth(None, {"num_hidden_layers": 3}) == 3


# ---------------------------------------------------------------------------------------- HuBERT
@pytest.fixture(scope="module")
def hubert_split(decoded: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The features stage's output for the split, at batch sizes 1 and 3."""
    encoder = encoder_from_spec("hubert_rvq", HUBERT_SPEC)
    out = tmp_path_factory.mktemp("hubert")
    files = {}
    for batch_size in (1, 3):
        files[batch_size] = out / f"b{batch_size}.h5"
        assert encoder.extract(audio_path(decoded, 16000, "train"), files[batch_size], batch_size=batch_size, extra={"split": "train"}) == len(SECONDS)
    return files


def test_hubert_features_are_50_per_second_of_the_chosen_layer(decoded: Path, hubert_split: dict[int, Path]) -> None:
    encoder = encoder_from_spec("hubert_rvq", HUBERT_SPEC)
    with RaggedReader(hubert_split[1]) as feats, RaggedReader(audio_path(decoded, 16000, "train")) as audio:
        attrs = dict(feats.attrs)
        assert attrs["frame_rate_hz"] == 50.0 and attrs["sample_rate"] == 16000 and attrs["layer"] == 2 and attrs["split"] == "train"
        assert json.loads(attrs["spec"]) == HUBERT_SPEC and attrs["weights_sha256"] == model_fingerprint(encoder.weights)
        assert sorted(feats.clip_ids) == [f"c{k}" for k in range(len(SECONDS))]
        for clip_id, f in feats:
            n = audio.length(clip_id)
            t = (n - 400) // 320 + 1 if n >= 400 else 0  # receptive field 25 ms, hop 20 ms
            assert f.shape == (t, 32) and f.dtype == np.float16 and t == hubert_num_frames(n, encoder.model.config)
            if t:  # layer 2's output of the clip alone, stored as float16
                (alone,) = hubert_features(encoder.model, [read_clip(audio, clip_id)], layer=2)
                np.testing.assert_array_equal(f, alone.astype(np.float16))
        assert feats["c0"].shape == (49, 32) and feats["c3"].shape == (0, 32)  # 1 s: 49 frames; 20 ms: none


def test_hubert_batched_extraction_equals_alone(hubert_split: dict[int, Path]) -> None:
    """Only equal-length clips share a batch, so batching moves features by float rounding only."""
    with RaggedReader(hubert_split[1]) as one, RaggedReader(hubert_split[3]) as three:
        assert one.clip_ids == three.clip_ids  # the stable length order does not depend on batch_size
        scale = max(float(np.abs(f.astype(np.float32)).max(initial=0)) for _, f in one)
        for clip_id, a in one:
            b = three[clip_id]
            assert a.shape == b.shape
            assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max(initial=0) <= 2e-3 * scale  # an fp16 ulp


def test_hubert_rvq_tokens_in_range_and_caption_front_end_reproduces_them(decoded: Path, hubert_split: dict[int, Path], tmp_path: Path) -> None:
    """codebooks -> tokenize -> the model directory's front end, as the pipeline runs them for
    hubert_rvq (the same code as for BEATs-RVQ); a raw file gives exactly the trained-on tokens."""
    kind = token_type("hubert_rvq")
    sample = np.concatenate([f for _, f in iter_features(hubert_split[1])])
    codebooks = fit_residual_codebooks(sample, 4, 16, KMeansConfig(niter=4, seed=0))
    save_codebooks(tmp_path / "rvq.npz", codebooks, fit=True)
    rvq = ResidualVQ(codebooks, num_layers=3)
    tokens = {cid: rvq.encode(f).numpy().astype(np.int16) for cid, f in iter_features(hubert_split[1])}  # stages/tokenize.py
    for (clip_id, f), c in zip(iter_features(hubert_split[1]), tokens.values(), strict=True):
        assert c.shape == (len(f), 3) and (len(c) == 0 or (c.min() >= 0 and c.max() < 16)), clip_id  # codes in range
    assert len(np.unique(tokens["c0"][:, 0])) > 1  # the codes vary over the clip

    # train's write_frontend from the token metadata tokenize writes
    with RaggedReader(hubert_split[1]) as feats:
        record = encoder_record(kind, json.loads(feats.attrs["spec"]), bool(feats.attrs["pretrained"]), feats.attrs["weights_sha256"])
    meta = token_metadata(kind, 3, 16, record, codebooks=("rvq.npz", {"fit": True}))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    write_frontend(model_dir, meta, tmp_path / "rvq.npz", None)
    front = json.loads((model_dir / "frontend.json").read_text())
    to_codes = AudioToCodes(front, model_dir, "cpu")
    with RaggedReader(audio_path(decoded, 16000, "train")) as audio:
        for clip_id in ("c0", "c1", "c5"):
            codes = to_codes.file(_wav(tmp_path / f"{clip_id}.wav", read_clip(audio, clip_id)))
            np.testing.assert_array_equal(codes, tokens[clip_id])
        with pytest.raises(ValueError, match="shorter than HuBERT's receptive field"):  # clapart caption pads such clips
            to_codes.file(_wav(tmp_path / "c3.wav", read_clip(audio, "c3")))
    # a front end whose weights differ from the recorded ones is refused
    front["encoder"]["spec"]["seed"] = 4
    with pytest.raises(ModelDirError, match="differ from those the model was trained on"):
        AudioToCodes(front, model_dir, "cpu")


def test_hubert_layer_beyond_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match=r"hubert.layer = 4 is not a Transformer layer of this HuBERT \(1\.\.3\)"):
        encoder_from_spec("hubert_rvq", {**HUBERT_SPEC, "layer": 4})


# ------------------------------------------------------------------------------- SpeechTokenizer
def test_speechtokenizer_tokens_are_8_codebooks_at_50_hz_each_clip_alone(decoded: Path, tmp_path: Path) -> None:
    encoder = encoder_from_spec("speechtokenizer", ST_SPEC)
    src = audio_path(decoded, 16000, "train")
    tables = {}
    for batch_size in (1, 3):
        out = tmp_path / f"b{batch_size}.parquet"
        assert encoder.extract(src, out, batch_size=batch_size, extra={"split": "train"}) == len(SECONDS)
        tables[batch_size] = read_tokens(out)
    one, three = tables[1], tables[3]
    assert one.clip_ids == three.clip_ids and sorted(one.clip_ids) == [f"c{k}" for k in range(len(SECONDS))]
    assert one.metadata == three.metadata
    meta = one.metadata
    assert (one.num_codebooks, one.codebook_size) == (8, 1024)
    assert (meta["encoder_type"], meta["sample_rate"], meta["frame_rate_hz"], meta["split"]) == ("speechtokenizer", 16000, 50.0, "train")
    assert "codebooks_file" not in meta and "rvq_layers" not in meta  # its own codes: rvq.* never reaches them
    assert meta["encoder"] == {"name": "speechtokenizer", "spec": ST_SPEC, "pretrained": False, "weights_sha256": model_fingerprint(encoder.weights)}
    with RaggedReader(src) as audio:
        for clip_id, a, b in zip(one.clip_ids, one.codes, three.codes, strict=True):
            n = audio.length(clip_id)
            assert a.dtype == np.int16 and a.shape == b.shape == (math.ceil(n / 320), 8)  # 50 frames/s
            np.testing.assert_array_equal(a, b)  # batching never pads, so it changes nothing
            (alone,) = speechtokenizer_codes(encoder.model, [read_clip(audio, clip_id)])
            np.testing.assert_array_equal(a, alone)
            assert a.min() >= 0 and a.max() < 1024
        assert one.codes[one.clip_ids.index("c0")].shape == (50, 8)
        assert len(np.unique(one.codes[one.clip_ids.index("c0")])) > 8  # the random codebooks do not collapse

        # the model directory's front end turns a raw file into exactly these codes
        model_dir = tmp_path / "model"
        model_dir.mkdir()
        write_frontend(model_dir, meta, tmp_path / "no-codebooks.npz", None)  # no codebooks file for this type
        assert not (model_dir / "rvq.npz").exists()
        to_codes = AudioToCodes(json.loads((model_dir / "frontend.json").read_text()), model_dir, "cpu")
        assert to_codes.rvq is None
        codes = to_codes.file(_wav(tmp_path / "c1.wav", read_clip(audio, "c1")))
        np.testing.assert_array_equal(codes, one.codes[one.clip_ids.index("c1")])
    with pytest.raises(ValueError, match="needs 16000 Hz: rerun decode"):
        encoder.extract(audio_path(decoded, 24000, "train"), tmp_path / "x.parquet", batch_size=1)


def test_speechtokenizer_checkpoint_loads_with_the_config_beside_it(tmp_path: Path) -> None:
    """speechtokenizer.config null: config.json in the checkpoint's folder (the package's layout)."""
    spec = {"checkpoint": str(FIXTURES / "SpeechTokenizer.pt"), "random": SMALL_ST, "seed": 0, "config": None}
    encoder = encoder_from_spec("speechtokenizer", spec)
    assert encoder.pretrained and encoder.model.config.n_q == 4 and encoder.model.config.hop_length == 64
    explicit = encoder_from_spec("speechtokenizer", {**spec, "config": str(FIXTURES / "config.json")})
    assert model_fingerprint(explicit.weights) == model_fingerprint(encoder.weights)
    wave = _clip(0.3, 1)
    np.testing.assert_array_equal(encoder.codes(wave), explicit.codes(wave))
    assert encoder.codes(wave).shape == (math.ceil(len(wave) / 64), 4)
    (tmp_path / "SpeechTokenizer.pt").write_bytes((FIXTURES / "SpeechTokenizer.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match="config .*config.json does not exist"):
        encoder_from_spec("speechtokenizer", {**spec, "checkpoint": str(tmp_path / "SpeechTokenizer.pt")})


def test_speech_types_rebuild_the_same_weights_from_their_spec() -> None:
    """What tokenize and clapart caption rely on: the recorded spec gives the very same encoder."""
    for name, spec in (("hubert_rvq", HUBERT_SPEC), ("speechtokenizer", ST_SPEC)):
        a, b = encoder_from_spec(name, spec), encoder_from_spec(name, json.loads(json.dumps(spec)))
        assert model_fingerprint(a.weights) == model_fingerprint(b.weights)
        assert not a.pretrained and a.weights.training is False
        other = encoder_from_spec(name, {**spec, "seed": spec["seed"] + 1})
        assert model_fingerprint(other.weights) != model_fingerprint(a.weights)
    assert torch.get_default_dtype() == torch.float32
