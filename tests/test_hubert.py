"""clapart_core.encoders.hubert: HuBERT layer features at 50 frames/s, per clip, with a tiny random HubertModel.

The tiny model keeps HuBERT base's convolutional feature encoder geometry (kernels 10,3,3,3,3,2,2,
strides 5,2,2,2,2,2,2, GroupNorm after the first conv) so frame counts and the padding behaviour
are the real ones; only widths and depth are small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import pytest
import torch

from clapart_core.encoders.hubert import (
    HUBERT_BASE_CONFIG,
    HUBERT_BASE_NAME,
    HUBERT_UNIT_LAYER,
    hubert_features,
    hubert_frame_rate,
    hubert_num_frames,
    load_hubert,
    random_hubert,
)
from clapart_core.encoders.spec import ModelNotFoundError

TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
# Batched (equal lengths only) vs alone: float32 rounding of batched matmuls, measured 3e-6 of a
# max |feature| of 3.2 (1e-6 relative) on this model; bounded at 1e-5 relative.
BATCH_TOL = 1e-5


@pytest.fixture(scope="module")
def tiny() -> Any:
    return random_hubert(TINY, seed=0)


def _waves(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        t = np.arange(n) / 16000
        out.append(
            (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)).astype(np.float32)
        )
    return out


def _hidden_states(model: Any, wave: np.ndarray) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states


def test_fifty_frames_per_second(tiny: Any) -> None:
    assert hubert_frame_rate(tiny.config) == 50.0
    lengths = [400, 719, 720, 16000, 48000]
    feats = hubert_features(tiny, _waves(lengths), layer=2)
    for n, f in zip(lengths, feats, strict=True):
        t = (n - 400) // 320 + 1  # receptive field 400 samples (25 ms), hop 320 (20 ms)
        assert f.shape == (t, 32) and f.dtype == np.float32
        assert t == hubert_num_frames(n, tiny.config) == int(tiny._get_feat_extract_output_lengths(n))
    assert [f.shape[0] for f in feats] == [1, 1, 2, 49, 149]


def test_layer_selection_is_the_nth_transformer_layer(tiny: Any) -> None:
    (wave,) = _waves([8000])
    hidden = _hidden_states(tiny, wave)
    outputs = []
    for layer in range(1, TINY["num_hidden_layers"] + 1):
        (f,) = hubert_features(tiny, [wave], layer=layer)
        np.testing.assert_array_equal(f, hidden[layer][0].numpy())  # fairseq's output_layer=n
        outputs.append(f)
    assert not np.allclose(outputs[0], outputs[1])
    for bad in (0, TINY["num_hidden_layers"] + 1):
        with pytest.raises(ValueError, match=r"layer must be in 1\.\.3"):
            hubert_features(tiny, [wave], layer=bad)


def test_stable_layer_norm_variant_stops_before_the_final_norm() -> None:
    """HuBERT large's pre-LN layout: layer n < N is the n-th layer's output without the encoder's
    final LayerNorm, as fairseq's extract_features(output_layer=n) returns it."""
    model = random_hubert({**TINY, "do_stable_layer_norm": True, "feat_extract_norm": "layer"}, seed=1)
    (wave,) = _waves([6000], seed=1)
    hidden = _hidden_states(model, wave)
    for layer in (1, 2):
        (f,) = hubert_features(model, [wave], layer=layer)
        np.testing.assert_array_equal(f, hidden[layer][0].numpy())


def test_batched_equals_alone(tiny: Any) -> None:
    lengths = [16000, 9000, 16000, 16000, 9000, 4000]
    waves = _waves(lengths, seed=2)
    alone = hubert_features(tiny, waves, layer=3, batch_size=1)
    batched = hubert_features(tiny, waves, layer=3, batch_size=4)
    scale = max(float(np.abs(a).max()) for a in alone)
    for n, a, b in zip(lengths, alone, batched, strict=True):
        assert a.shape == b.shape == (hubert_num_frames(n, tiny.config), 32)
        assert np.abs(a - b).max() <= BATCH_TOL * scale


def test_zero_padding_changes_features_with_or_without_a_mask(tiny: Any) -> None:
    """Why clips of different lengths never share a batch: the first conv's GroupNorm normalises
    over the padded length, so a padded short clip differs from itself alone everywhere."""
    long, short = _waves([16000, 9000], seed=3)
    (alone,) = hubert_features(tiny, [short], layer=2)
    batch = np.zeros((2, 16000), np.float32)
    batch[0], batch[1, :9000] = long, short
    mask = torch.from_numpy((np.arange(16000)[None] < np.array([[16000], [9000]])).astype(np.int64))
    t = alone.shape[0]
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            padded = tiny(torch.from_numpy(batch), output_hidden_states=True, **kwargs).hidden_states[2][1, :t].numpy()
            assert np.abs(padded - alone).max() > 0.1 * np.abs(alone).max()


def test_normalize_standardises_each_clip() -> None:
    """normalize=True is fairseq's per-clip layer_norm of the waveform. Tested on the LayerNorm
    feature-encoder variant: base's bias-free first conv followed by a per-channel GroupNorm makes
    it (nearly) blind to a clip's offset and scale anyway."""
    model = random_hubert({**TINY, "do_stable_layer_norm": True, "feat_extract_norm": "layer"}, seed=2)
    (wave,) = _waves([8000], seed=4)
    wave = 3.0 * wave + 0.5
    (normed,) = hubert_features(model, [wave], layer=1, normalize=True)
    standard = ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-5)).astype(np.float32)
    (ref,) = hubert_features(model, [standard], layer=1)
    np.testing.assert_allclose(normed, ref, atol=1e-4)
    (raw,) = hubert_features(model, [wave], layer=1)
    assert not np.allclose(raw, ref, atol=1e-2)


def test_bad_clips_are_named(tiny: Any) -> None:
    with pytest.raises(ValueError, match="clip 1 must be a 1-D waveform of at least 400 samples"):
        hubert_features(tiny, _waves([8000, 399]), layer=2)
    with pytest.raises(ValueError, match="clip 0"):
        hubert_features(tiny, [np.zeros((2, 8000), np.float32)], layer=2)
    with pytest.raises(ValueError, match="batch_size"):
        hubert_features(tiny, _waves([8000]), layer=2, batch_size=0)


def test_random_hubert_is_seeded() -> None:
    state = torch.get_rng_state()
    a, b, c = random_hubert(TINY, seed=5), random_hubert(TINY, seed=5), random_hubert(TINY, seed=6)
    assert torch.equal(state, torch.get_rng_state())  # the caller's global RNG is untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training


def test_default_is_hubert_base_and_layer_6() -> None:
    """random_hubert() with no overrides is facebook/hubert-base-ls960's architecture (no download)."""
    from transformers import HubertConfig

    defaults = HubertConfig().to_dict()
    assert {k: defaults[k] for k in HUBERT_BASE_CONFIG if k != "feat_proj_dropout"} == {
        k: v for k, v in HUBERT_BASE_CONFIG.items() if k != "feat_proj_dropout"
    }
    assert HUBERT_UNIT_LAYER == 6
    model = random_hubert(seed=0)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.conv_dim, cfg.feat_extract_norm) == (
        768,
        12,
        [512] * 7,
        "group",
    )
    (f,) = hubert_features(model, _waves([16000]))  # default layer 6
    assert f.shape == (49, 768)


def test_load_from_a_saved_directory(tiny: Any, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path / "hubert")
    loaded = load_hubert(str(tmp_path / "hubert"))
    assert not loaded.training
    waves = _waves([8000], seed=6)
    np.testing.assert_array_equal(hubert_features(loaded, waves, 2)[0], hubert_features(tiny, waves, 2)[0])


def test_checkpoint_of_another_shape_is_refused(tiny: Any, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 4  # a layer the weights do not have: from_pretrained would invent it
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a complete HuBERT checkpoint: .* weights are missing"):
        load_hubert(str(tmp_path))


def test_missing_model_is_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import, so set the parsed constant too: no network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(ModelNotFoundError) as err:
        load_hubert(HUBERT_BASE_NAME)
    message = str(err.value)
    assert repr(HUBERT_BASE_NAME) in message and "`hf download facebook/hubert-base-ls960`" in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    missing_dir = str(tmp_path / "no_such_model")
    with pytest.raises(ModelNotFoundError) as err:
        load_hubert(missing_dir)
    message = str(err.value)
    assert (
        repr(missing_dir) in message and f"hf download facebook/hubert-base-ls960 --local-dir {missing_dir}" in message
    )
    assert "\n" not in message and message.count(". ") == 0
