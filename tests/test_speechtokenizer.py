"""clapart_core.encoders.speechtokenizer against SpeechTokenizer's own code (tests/fixtures/speechtokenizer).

The fixtures are the package's outputs (PyPI ``speechtokenizer`` 1.0.1, torch 2.13 CPU) for a small
seeded random model (n_filters 8, dimension 32, strides [4, 4, 2, 2], 4 x 64 codes): codes, RVQ
layer 1's quantized vectors and the semantic projection of each clip encoded alone, and the codes
of the zero-padded batch. Tolerances from the fixture README: >= 99 % equal codes per layer
(float32 noise may flip a near-tie), features within 1e-4 of the largest magnitude. Measured with
torch 2.13 CPU: 100 % equal codes and bit-identical features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clapart_core.encoders.speechtokenizer import (
    PUBLISHED_SPEECHTOKENIZER_CONFIG,
    CheckpointError,
    SpeechTokenizerConfig,
    SpeechTokenizerEncoder,
    load_speechtokenizer,
    random_speechtokenizer,
    speechtokenizer_codes,
)

FIXTURES = Path(__file__).parent / "fixtures" / "speechtokenizer"
CODE_AGREEMENT = 0.99
FEATURE_TOL = 1e-4  # relative to the largest reference magnitude


@pytest.fixture(scope="module")
def model() -> SpeechTokenizerEncoder:
    return load_speechtokenizer(FIXTURES / "config.json", FIXTURES / "SpeechTokenizer.pt")


@pytest.fixture(scope="module")
def cases() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "cases.npz") as z:
        return dict(z)


def _clips(cases: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [cases["batch"][i, 0, :n] for i, n in enumerate(cases["lengths"])]


def _agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of equal codes per RVQ layer; a, b: [n_q, ...]."""
    assert a.shape == b.shape
    return (a == b).reshape(a.shape[0], -1).mean(axis=1)


# ------------------------------------------------------------------------- reference agreement
def test_codes_per_clip_match_the_package(model: SpeechTokenizerEncoder, cases: dict[str, np.ndarray]) -> None:
    cfg = model.config
    for i, clip in enumerate(_clips(cases)):
        codes = model.encode(torch.from_numpy(clip)[None, None])  # [n_q, 1, T]
        assert codes.dtype == torch.int64
        expected_t = -(-clip.size // int(np.prod(cfg.strides)))  # ceil(S / prod(strides))
        assert codes.shape == (cfg.n_q, 1, expected_t) == (cfg.n_q, 1, cfg.num_frames(clip.size))
        ref = cases[f"codes_{i}"]
        assert ref.shape == (cfg.n_q, expected_t)
        assert (_agreement(codes[:, 0].numpy(), ref) >= CODE_AGREEMENT).all(), _agreement(codes[:, 0].numpy(), ref)


def test_rvq1_and_semantic_features_match_the_package(
    model: SpeechTokenizerEncoder, cases: dict[str, np.ndarray]
) -> None:
    for i, clip in enumerate(_clips(cases)):
        wave = torch.from_numpy(clip)[None, None]
        rvq1 = model.forward_feature(wave, layers=[0])[0][0].numpy()  # [D, T]
        ref = cases[f"rvq1_{i}"]
        assert rvq1.shape == ref.shape
        assert np.abs(rvq1 - ref).max() <= FEATURE_TOL * np.abs(ref).max()
        sem = model.semantic_features(wave)[0].numpy()  # [T, semantic_dimension]
        ref = cases[f"semantic_{i}"]
        assert sem.shape == ref.shape == (model.config.num_frames(clip.size), model.config.semantic_dimension)
        assert np.abs(sem - ref).max() <= FEATURE_TOL * np.abs(ref).max()


def test_padded_batch_reproduces_the_package_and_differs_from_alone(
    model: SpeechTokenizerEncoder, cases: dict[str, np.ndarray]
) -> None:
    """encode() of a zero-padded batch is the package's (batch-dependent) result; that is why
    speechtokenizer_codes never pads."""
    batch = model.encode(torch.from_numpy(cases["batch"])).numpy()
    assert (_agreement(batch, cases["batch_codes"]) >= CODE_AGREEMENT).all()
    shortest = int(np.argmin(cases["lengths"]))
    t = cases[f"codes_{shortest}"].shape[1]
    assert (batch[:, shortest, :t] != cases[f"codes_{shortest}"]).any()


def test_speechtokenizer_codes_equal_each_clip_alone(
    model: SpeechTokenizerEncoder, cases: dict[str, np.ndarray]
) -> None:
    clips = _clips(cases)
    # a second clip of clip 0's length, so that batch_size > 1 really shares a forward pass
    twin = (clips[0][::-1] * 0.5).copy()
    waves = [clips[0], clips[1], twin, clips[2]]
    alone = speechtokenizer_codes(model, waves)
    batched = speechtokenizer_codes(model, waves, batch_size=4)
    for codes, ref in zip(alone[:2] + alone[3:], [cases["codes_0"], cases["codes_1"], cases["codes_2"]], strict=True):
        assert codes.dtype == np.int16
        assert codes.shape == ref.T.shape  # [T, n_q]
        assert (_agreement(codes.T, ref) >= CODE_AGREEMENT).all()
    for a, b in zip(alone, batched, strict=True):
        np.testing.assert_array_equal(a, b)
    single = model.encode(torch.from_numpy(twin)[None, None])[:, 0].numpy().T
    np.testing.assert_array_equal(alone[2], single)


def test_speechtokenizer_codes_rejects_bad_clips(model: SpeechTokenizerEncoder) -> None:
    with pytest.raises(ValueError, match="clip 1 must be a non-empty 1-D waveform"):
        speechtokenizer_codes(model, [np.zeros(100, np.float32), np.zeros((2, 100), np.float32)])
    with pytest.raises(ValueError, match="clip 0"):
        speechtokenizer_codes(model, [np.zeros(0, np.float32)])


def test_very_short_clip_is_encoded(model: SpeechTokenizerEncoder) -> None:
    """Clips shorter than a kernel's padding take the zero-extended reflection path."""
    (codes,) = speechtokenizer_codes(model, [np.full(5, 0.1, np.float32)])
    assert codes.shape == (1, model.config.n_q)


# ------------------------------------------------------------------------- loader
def _write_ckpt(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "SpeechTokenizer.pt"
    torch.save(state, path)
    return path


def _state() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "SpeechTokenizer.pt", weights_only=True)


def test_loader_ignores_only_decoder_keys(tmp_path: Path, cases: dict[str, np.ndarray]) -> None:
    state = _state()
    assert any(k.startswith("decoder.") for k in state)  # the fixture is a full checkpoint
    without_decoder = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    model = load_speechtokenizer(FIXTURES / "config.json", _write_ckpt(tmp_path, without_decoder))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    codes = model.encode(torch.from_numpy(_clips(cases)[2])[None, None])[:, 0].numpy()
    assert (_agreement(codes, cases["codes_2"]) >= CODE_AGREEMENT).all()


def test_loader_names_unknown_and_missing_keys(tmp_path: Path) -> None:
    state = _state()
    state["encoder.model.99.extra"] = torch.zeros(1)
    del state["quantizer.vq.layers.3._codebook.embed"]
    with pytest.raises(CheckpointError) as err:
        load_speechtokenizer(FIXTURES / "config.json", _write_ckpt(tmp_path, state))
    msg = str(err.value)
    assert "missing keys quantizer.vq.layers.3._codebook.embed" in msg
    assert "unknown keys encoder.model.99.extra" in msg
    assert "\n" not in msg


def test_loader_names_a_shape_mismatch(tmp_path: Path) -> None:
    config = json.loads((FIXTURES / "config.json").read_text())
    config["codebook_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"_codebook\.\w+ has shape \(64.*implies \(32"):
        load_speechtokenizer(tmp_path / "config.json", FIXTURES / "SpeechTokenizer.pt")


def test_loader_refuses_code_and_non_state_dicts(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"encoder": print}, evil)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_speechtokenizer(FIXTURES / "config.json", evil)
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        load_speechtokenizer(FIXTURES / "config.json", _write_ckpt(tmp_path, {"model": {"a": torch.zeros(1)}}))


def test_loader_refuses_an_uninitialised_codebook(tmp_path: Path) -> None:
    state = _state()
    state["quantizer.vq.layers.2._codebook.inited"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"codebooks \[2\] were never initialised"):
        load_speechtokenizer(FIXTURES / "config.json", _write_ckpt(tmp_path, state))


def test_loader_config_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="hf download fnlp/SpeechTokenizer"):
        load_speechtokenizer(tmp_path / "config.json", FIXTURES / "SpeechTokenizer.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_speechtokenizer(FIXTURES / "config.json", tmp_path / "none.pt")
    config = json.loads((FIXTURES / "config.json").read_text())
    del config["n_q"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lacks the model keys n_q"):
        load_speechtokenizer(tmp_path / "config.json", FIXTURES / "SpeechTokenizer.pt")


def test_config_reads_package_keys_and_ignores_training_keys() -> None:
    raw = {**PUBLISHED_SPEECHTOKENIZER_CONFIG, "learning_rate": 1e-4, "segment_size": 48000}
    cfg = SpeechTokenizerConfig.from_dict(raw)
    assert cfg == SpeechTokenizerConfig()  # the defaults are the published configuration
    assert cfg.to_dict() == PUBLISHED_SPEECHTOKENIZER_CONFIG
    assert cfg.hop_length == 320 and cfg.frame_rate == 50.0
    with pytest.raises(ValueError, match="activation"):
        SpeechTokenizerConfig.from_dict({**raw, "activation": "Snake"})


# ------------------------------------------------------------------------- random models
def test_random_model_of_the_published_configuration() -> None:
    """The published layout (n_filters 64, dimension 1024, strides 8-5-4-2, 8 x 1024, 2 LSTM
    layers) with random weights: 1 s of 16 kHz audio -> 50 frames of 8 codes in [0, 1024)."""
    model = random_speechtokenizer(PUBLISHED_SPEECHTOKENIZER_CONFIG, seed=0)
    assert model.config == SpeechTokenizerConfig()
    lstm = model.encoder.model[13].lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bidirectional) == (1024, 1024, 2, True)
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    wave = (0.1 * rng.standard_normal(16000) + 0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    (codes,) = speechtokenizer_codes(model, [wave])
    assert codes.shape == (50, 8) and codes.dtype == np.int16
    assert codes.min() >= 0 and codes.max() < 1024
    assert len(np.unique(codes)) > 8  # the codebooks do not collapse onto one codeword


def test_random_model_is_seeded() -> None:
    small = {"n_filters": 4, "dimension": 16, "semantic_dimension": 8, "codebook_size": 16, "n_q": 2, "lstm_layers": 1}
    state = torch.get_rng_state()
    a, b = random_speechtokenizer(small, seed=3), random_speechtokenizer(small, seed=3)
    c = random_speechtokenizer(small, seed=4)
    assert torch.equal(state, torch.get_rng_state())  # the caller's global RNG is untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    wave = np.random.default_rng(1).standard_normal(3000).astype(np.float32) * 0.1
    (codes,) = speechtokenizer_codes(a, [wave])
    assert codes.shape == (a.config.num_frames(3000), 2) == (10, 2)


def test_random_model_round_trips_through_the_loader(tmp_path: Path) -> None:
    """A state dict saved from this module loads with the package-format loader."""
    small = {"n_filters": 4, "dimension": 16, "semantic_dimension": 16, "codebook_size": 16, "n_q": 2}
    model = random_speechtokenizer(small, seed=0)
    assert not any(k.startswith("transform.") for k in model.state_dict())  # Identity when sizes are equal
    torch.save(model.state_dict(), tmp_path / "SpeechTokenizer.pt")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    loaded = load_speechtokenizer(tmp_path / "config.json", tmp_path / "SpeechTokenizer.pt")
    wave = torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(0)) * 0.1
    assert torch.equal(model.encode(wave), loaded.encode(wave))
