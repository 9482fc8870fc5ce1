"""clapart_core.encoders.beats against vectors produced by the official BEATs code (tests/fixtures/beats).

Stages are checked separately so that every architectural detail has a test that fails when it
changes (tolerances from the reference README):
  masks and relative-position buckets exact; the encoder fed the official fbank <= 3e-5;
  end to end (own fbank) max <= 2e-3 and mean <= 1e-4; fine-tuned probabilities <= 1e-4
  (<= 1e-6 from the official fbank); tokenizer labels exact where the decision margin > 2e-3.
Batched outputs follow the per-clip ("alone") semantics, so padded-batch rows are compared with
the official *alone* outputs; ``padding_semantics="official"`` is compared with the official
batched outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clapart_core.encoders import beats as B
from clapart_core.encoders.beats import (
    BEATs,
    BEATsConfig,
    CheckpointError,
    load_acoustic_tokenizer,
    load_beats,
    num_patches,
    padding_masks,
    random_acoustic_tokenizer,
    random_beats,
    relative_position_bucket,
    save_beats_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures" / "beats"
ENCODER_TOL = 3e-5
# Mean |diff| of the encoder fed the official fbank: measured 1.2e-7 (float32 rounding); one
# LayerNorm with eps 1e-6 instead of 1e-5 moves it to 1.5e-6 while staying under ENCODER_TOL.
ENCODER_MEAN_TOL = 6e-7
E2E_MAX, E2E_MEAN = 2e-3, 1e-4
TINY = {"encoder_layers": 2, "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4, "embed_dim": 96}
REAL_CFG = {  # BEATs_iter3_plus_AS2M.pt (shared/reference/beats/real_configs.json)
    "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05, "dropout_input": 0.0, "layer_norm_first": False, "conv_bias": False, "conv_pos": 128,
    "conv_pos_groups": 16, "relative_position_embedding": True, "num_buckets": 320, "max_distance": 800,
    "gru_rel_pos": True, "deep_norm": True, "input_patch_size": 16, "layer_wise_gradient_decay_ratio": 0.6,
    "embed_dim": 512, "finetuned_model": False,
}
ALONE_PATCHES = (48, 120, 184)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def inp() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "inputs.npz"))


@pytest.fixture(scope="module")
def exp() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "expected_beats_tiny.npz"))


@pytest.fixture(scope="module")
def exp_tok() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "expected_tokenizer_tiny.npz"))


@pytest.fixture(scope="module")
def model() -> BEATs:
    return load_beats(FIXTURES / "beats_tiny.pt")


@pytest.fixture(scope="module")
def finetuned() -> BEATs:
    return load_beats(FIXTURES / "beats_tiny_finetuned.pt")


@pytest.fixture(scope="module")
def tokenizer() -> B.BEATsTokenizer:
    return load_acoustic_tokenizer(FIXTURES / "tokenizer_tiny.pt")


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def clip(inp: dict[str, np.ndarray], i: int) -> torch.Tensor:
    return t(inp["waveforms"][i, : inp["lengths"][i]])[None]


def assert_close(ours: torch.Tensor, ref: np.ndarray, max_tol: float, mean_tol: float | None = None) -> None:
    diff = np.abs(ours.detach().float().cpu().numpy() - ref)
    assert ours.shape == ref.shape, (tuple(ours.shape), ref.shape)
    assert diff.max() <= max_tol, f"max |diff| {diff.max():.3g} > {max_tol}"
    if mean_tol is not None:
        assert diff.mean() <= mean_tol, f"mean |diff| {diff.mean():.3g} > {mean_tol}"


# ---------------------------------------------------------------------------------- masks, buckets
def test_num_patches() -> None:
    assert [num_patches(s) for s in (0, 2799, 2800, 16000, 40000, 59200, 9600, 160000, 480000)] == [
        0, 0, 8, 48, 120, 184, 24, 496, 1496,
    ]


def test_official_padding_masks_exact(inp: dict[str, np.ndarray], exp: dict[str, np.ndarray]) -> None:
    for suffix in ("", "_short"):
        frames, patches = padding_masks(t(inp["padding_mask" + suffix]), "official")
        np.testing.assert_array_equal(frames.numpy(), exp["frame_padding_mask" + suffix])
        np.testing.assert_array_equal(patches.numpy(), exp["padding_mask" + suffix])


def test_alone_padding_masks_count_whole_time_patches(inp: dict[str, np.ndarray], exp: dict[str, np.ndarray]) -> None:
    frames, patches = padding_masks(t(inp["padding_mask"]))
    assert (~frames).sum(1).tolist() == [98, 248, 368]
    assert (~patches).sum(1).tolist() == [num_patches(int(n)) for n in inp["lengths"]] == list(ALONE_PATCHES)
    # Valid patches are a prefix, and a subset of what the official reduction calls valid.
    for row, n in zip(patches, ALONE_PATCHES, strict=True):
        assert not row[:n].any() and row[n:].all()
    assert not (~patches & t(exp["padding_mask"])).any()
    _, short = padding_masks(t(inp["padding_mask_short"]))
    assert (~short).sum(1).tolist() == [48, 24]


def test_padding_mask_must_be_right_padding() -> None:
    mask = torch.zeros(1, 8000, dtype=torch.bool)
    mask[0, 100:200] = True
    with pytest.raises(ValueError, match="right padding"):
        padding_masks(mask)


def test_relative_position_buckets_exact(exp: dict[str, np.ndarray]) -> None:
    n = exp["rel_bucket"].shape[0]
    pos = torch.arange(n)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], 320, 800)
    np.testing.assert_array_equal(buckets.numpy(), exp["rel_bucket"].astype(np.int64))
    examples = {0: 0, -1: 1, 1: 161, -80: 80, 80: 240, 183: 268, -183: 108, 777: 318, 778: 319, 5000: 319, -5000: 159}
    got = relative_position_bucket(torch.tensor(list(examples)), 320, 800).tolist()
    assert got == list(examples.values())


# ---------------------------------------------------------------------------------- encoder only
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_encoder_fed_official_fbank(attn: str, model: BEATs, exp: dict[str, np.ndarray]) -> None:
    model.set_attn_implementation(attn)
    try:
        with torch.inference_mode():
            assert_close(model(t(exp["fbank"]), t(exp["padding_mask"])), exp["features"], ENCODER_TOL, ENCODER_MEAN_TOL)
            for i, frames in enumerate((98, 248, 368)):
                ours = model(t(exp["fbank"][i : i + 1, :frames]))
                assert_close(ours, exp[f"features_alone_{i}"], ENCODER_TOL, ENCODER_MEAN_TOL)
    finally:
        model.set_attn_implementation("sdpa")


def test_encoder_intermediates(model: BEATs, exp: dict[str, np.ndarray]) -> None:
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        return lambda _m, _i, out: captured.__setitem__(name, out.detach().clone())

    hooks = [
        model.post_extract_proj.register_forward_hook(keep("dbg2_post_proj")),
        model.encoder.layer_norm.register_forward_hook(keep("dbg2_enc_in")),
        model.encoder.layers[0].register_forward_hook(keep("dbg2_layer0")),
    ]
    try:
        with torch.inference_mode():
            model(t(exp["fbank"][2:3]))
    finally:
        for h in hooks:
            h.remove()
    for name in ("dbg2_post_proj", "dbg2_enc_in", "dbg2_layer0"):
        assert_close(captured[name], exp[name], ENCODER_TOL, ENCODER_MEAN_TOL)


def test_tanh_gelu_would_be_caught(model: BEATs, exp: dict[str, np.ndarray]) -> None:
    """The tanh approximation of GELU moves features by only ~1e-4: the encoder-only tolerance
    must be tight enough to see it (guards against loosening ENCODER_TOL)."""
    layers = model.encoder.layers
    try:
        for layer in layers:
            layer.activation_fn = B._ACTIVATIONS["gelu_accurate"]
        with torch.inference_mode():
            wrong = model(t(exp["fbank"][2:3])).numpy()
    finally:
        for layer in layers:
            layer.activation_fn = B._ACTIVATIONS["gelu"]
    assert np.abs(wrong - exp["features_alone_2"]).max() > 2 * ENCODER_TOL


# ---------------------------------------------------------------------------------- end to end
def test_end_to_end_each_clip_alone(model: BEATs, inp: dict[str, np.ndarray], exp: dict[str, np.ndarray]) -> None:
    for i in range(3):
        feats, mask = model.extract_features(clip(inp, i))
        assert mask is None
        assert_close(feats, exp[f"features_alone_{i}"], E2E_MAX, E2E_MEAN)
        # An all-False mask is the same as no mask (official behaviour too).
        feats0, mask0 = model.extract_features(clip(inp, i), torch.zeros(clip(inp, i).shape, dtype=torch.bool))
        assert not mask0.any() and torch.allclose(feats0, feats, atol=1e-6, rtol=0)
    short = t(inp["waveforms_short"][1:2, : inp["lengths_short"][1]])
    assert_close(model.extract_features(short)[0], exp["features_alone_short"], E2E_MAX, E2E_MEAN)


def test_padded_batch_rows_equal_alone(model: BEATs, inp: dict[str, np.ndarray], exp: dict[str, np.ndarray]) -> None:
    feats, mask = model.extract_features(t(inp["waveforms"]), t(inp["padding_mask"]))
    assert feats.shape == (3, 184, 64) and feats.dtype == torch.float32 and mask.shape == (3, 184)
    for i, n in enumerate(ALONE_PATCHES):
        assert (~mask[i]).sum() == n
        assert_close(feats[i : i + 1, :n], exp[f"features_alone_{i}"], E2E_MAX, E2E_MEAN)
        alone, _ = model.extract_features(clip(inp, i))
        torch.testing.assert_close(feats[i : i + 1, :n], alone, atol=2e-5, rtol=0)  # batch-independent
        assert not feats[i, n:].any(), "padded positions are zeroed"
    feats_s, mask_s = model.extract_features(t(inp["waveforms_short"]), t(inp["padding_mask_short"]))
    assert (~mask_s).sum(1).tolist() == [48, 24]
    assert_close(feats_s[0:1], exp["features_alone_0"], E2E_MAX, E2E_MEAN)
    assert_close(feats_s[1:2, :24], exp["features_alone_short"], E2E_MAX, E2E_MEAN)


def test_official_padding_semantics_reproduce_official_batches(model: BEATs, inp: dict[str, np.ndarray], exp: dict[str, np.ndarray]) -> None:
    for suffix in ("", "_short"):
        feats, mask = model.extract_features(
            t(inp["waveforms" + suffix]), t(inp["padding_mask" + suffix]), padding_semantics="official"
        )
        np.testing.assert_array_equal(mask.numpy(), exp["padding_mask" + suffix])
        assert_close(feats, exp["features" + suffix], E2E_MAX, E2E_MEAN)


# ---------------------------------------------------------------------------------- fine-tuned head
def test_finetuned_probabilities(finetuned: BEATs, inp: dict[str, np.ndarray], exp: dict[str, np.ndarray]) -> None:
    assert finetuned.label_dict == {i: f"tiny_class_{i}" for i in range(7)}
    with torch.inference_mode():  # fed the official fbank: very tight
        for i, frames in enumerate((98, 248, 368)):
            assert_close(finetuned(t(exp["fbank"][i : i + 1, :frames])), exp[f"ft_probs_alone_{i}"], 1e-6)
        assert_close(finetuned(t(exp["fbank"]), t(exp["padding_mask"])), exp["ft_probs"], 1e-6)
    probs, mask = finetuned.extract_features(t(inp["waveforms"]), t(inp["padding_mask"]))
    assert probs.shape == (3, 7) and mask.shape == (3, 184)
    for i in range(3):
        assert_close(probs[i : i + 1], exp[f"ft_probs_alone_{i}"], 1e-4)
        assert_close(finetuned.extract_features(clip(inp, i))[0], exp[f"ft_probs_alone_{i}"], 1e-4)
    official, _ = finetuned.extract_features(t(inp["waveforms"]), t(inp["padding_mask"]), padding_semantics="official")
    assert_close(official, exp["ft_probs"], 1e-4)
    short, _ = finetuned.extract_features(t(inp["waveforms_short"]), t(inp["padding_mask_short"]), padding_semantics="official")
    assert_close(short, exp["ft_probs_short"], 1e-4)


# ---------------------------------------------------------------------------------- tokenizer
def assert_labels(ours: torch.Tensor, ref: np.ndarray, margin: np.ndarray) -> None:
    ours_np = ours.numpy().reshape(-1)
    decided = margin > 2e-3
    np.testing.assert_array_equal(ours_np[decided], ref[decided])
    assert (ours_np == ref).mean() >= 0.99


def test_tokenizer_labels(tokenizer: B.BEATsTokenizer, inp: dict[str, np.ndarray], exp_tok: dict[str, np.ndarray]) -> None:
    for i, n in enumerate(ALONE_PATCHES):
        labels = tokenizer.extract_labels(clip(inp, i))
        assert labels.shape == (1, n) and labels.dtype == torch.int64
        assert_labels(labels, exp_tok[f"labels_alone_{i}"], exp_tok[f"margin_alone_{i}"])
    batch = tokenizer.extract_labels(t(inp["waveforms"]), t(inp["padding_mask"]))
    assert batch.shape == (3, 184)
    for i, n in enumerate(ALONE_PATCHES):
        assert_labels(batch[i, :n], exp_tok[f"labels_alone_{i}"], exp_tok[f"margin_alone_{i}"])
        assert (batch[i, n:] == -1).all()
    official = tokenizer.extract_labels(t(inp["waveforms"]), t(inp["padding_mask"]), padding_semantics="official")
    assert official.shape == (3, 184)
    assert_labels(official, exp_tok["labels"], exp_tok["margin"])
    short = tokenizer.extract_labels(t(inp["waveforms_short"]), t(inp["padding_mask_short"]), padding_semantics="official")
    assert_labels(short, exp_tok["labels_short"], exp_tok["margin_short"])


def test_tokenizer_quantizer_input(tokenizer: B.BEATsTokenizer, inp: dict[str, np.ndarray], exp_tok: dict[str, np.ndarray]) -> None:
    captured: list[torch.Tensor] = []
    hook = tokenizer.quantize_layer.register_forward_hook(lambda _m, _i, out: captured.append(out.clone()))
    try:
        tokenizer.extract_labels(clip(inp, 2))
    finally:
        hook.remove()
    assert_close(captured[0], exp_tok["dbg2_quantize_input"], E2E_MAX, E2E_MEAN)


def test_inference_changes_no_state(model: BEATs, tokenizer: B.BEATsTokenizer, inp: dict[str, np.ndarray]) -> None:
    before = {k: v.clone() for k, v in tokenizer.state_dict().items()}
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    wave, mask = t(inp["waveforms"]), t(inp["padding_mask"])
    first = tokenizer.extract_labels(wave, mask)
    second = tokenizer.extract_labels(wave, mask)
    model.extract_features(wave, mask)
    assert torch.equal(first, second)
    for name, value in tokenizer.state_dict().items():
        assert torch.equal(value, before[name]), name
    for name, value in model.state_dict().items():
        assert torch.equal(value, before_model[name]), name
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_cached_positional_kernel_follows_weight_changes() -> None:
    """The inference-time cache of the weight-normed positional kernel never serves stale weights."""
    model, fresh = random_beats(TINY, seed=3), random_beats(TINY, seed=4)
    wave = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
    model.extract_features(wave)  # fills the cache
    model.load_state_dict(fresh.state_dict())  # in-place copies: new parameter versions
    assert torch.equal(model.extract_features(wave)[0], fresh.extract_features(wave)[0])
    with torch.no_grad():
        model.encoder.pos_conv[0].weight_g.mul_(2.0)
        fresh.encoder.pos_conv[0].weight_g.mul_(2.0)
    assert torch.equal(model.extract_features(wave)[0], fresh.extract_features(wave)[0])
    # with autograd on, the kernel is recomputed so that gradients reach weight_g and weight_v
    model.encoder.pos_conv[0].weight().sum().backward()
    assert model.encoder.pos_conv[0].weight_g.grad is not None


# ---------------------------------------------------------------------------------- loaders
def official_ckpt(name: str) -> dict[str, Any]:
    return torch.load(FIXTURES / name, weights_only=True)


def test_missing_file_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_beats(tmp_path / "BEATs_iter3_plus_AS2M.pt")
    message = str(err.value)
    assert "BEATs_iter3_plus_AS2M.pt" in message and "github.com/microsoft/unilm" in message and "beats/" in message
    assert message.count(". ") == 0 and "\n" not in message
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_acoustic_tokenizer(tmp_path / "Tokenizer_iter3_plus_AS2M.pt")


def test_unknown_and_missing_keys_are_named(tmp_path: Path) -> None:
    ckpt = official_ckpt("beats_tiny.pt")
    ckpt["model"]["encoder.extra_scale"] = torch.ones(1)
    del ckpt["model"]["encoder.layers.1.fc2.bias"]
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_beats(path)
    assert "encoder.extra_scale" in str(err.value) and "encoder.layers.1.fc2.bias" in str(err.value)
    with pytest.raises(CheckpointError, match="load_acoustic_tokenizer.*quantize"):
        load_beats(FIXTURES / "tokenizer_tiny.pt")
    with pytest.raises(CheckpointError, match="quantize"):
        load_acoustic_tokenizer(FIXTURES / "beats_tiny.pt")


def test_wrong_shapes_and_diverging_bias_tables_are_refused(tmp_path: Path) -> None:
    ckpt = official_ckpt("beats_tiny.pt")
    ckpt["cfg"]["encoder_ffn_embed_dim"] = 256
    torch.save(ckpt, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"fc1\.weight has shape \(128, 64\)"):
        load_beats(tmp_path / "shape.pt")
    ckpt = official_ckpt("beats_tiny.pt")
    key = "encoder.layers.1.self_attn.relative_attention_bias.weight"
    ckpt["model"][key] = ckpt["model"][key] + 1.0
    torch.save(ckpt, tmp_path / "tables.pt")
    with pytest.raises(CheckpointError, match="relative_attention_bias"):
        load_beats(tmp_path / "tables.pt")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = official_ckpt("beats_tiny.pt")
    ckpt["model"]["patch_embedding.weight"] = _Payload(str(marker))
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_beats(path)
    assert not marker.exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_beats(tmp_path / "garbage.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="'cfg'"):
        load_beats(tmp_path / "other.pt")


def test_uninitialised_codebook_is_refused(tmp_path: Path) -> None:
    ckpt = official_ckpt("tokenizer_tiny.pt")
    ckpt["model"]["quantize.embedding.initted"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "tok.pt")
    with pytest.raises(CheckpointError, match="never initialised"):
        load_acoustic_tokenizer(tmp_path / "tok.pt")


def test_cfg_defaults_follow_the_official_code(tmp_path: Path) -> None:
    """A cfg key absent from the file takes the official code's default, not the real model's."""
    ckpt = official_ckpt("beats_tiny.pt")
    del ckpt["cfg"]["max_distance"]  # official default 1280, the published model uses 800
    ckpt["cfg"]["some_training_flag"] = 3
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.warns(UserWarning, match="some_training_flag"):
        loaded = load_beats(tmp_path / "partial.pt")
    assert loaded.config.max_distance == 1280


# ---------------------------------------------------------------------------------- random models, round trip
def test_default_config_is_the_published_model() -> None:
    assert BEATsConfig().to_dict() | REAL_CFG == BEATsConfig().to_dict()
    assert {k: BEATsConfig().to_dict()[k] for k in REAL_CFG} == REAL_CFG
    with torch.device("meta"):
        real = BEATs(BEATsConfig())
    assert sum(p.numel() for p in real.parameters()) == 90_311_792
    assert len(real.state_dict()) == 250


def test_random_models_are_seeded_and_leave_global_rng_alone() -> None:
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    a, b, c = random_beats(TINY, seed=3), random_beats(TINY, seed=3), random_beats(TINY, seed=4)
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.get_rng_state(), torch_state)
    for key, value in a.state_dict().items():
        assert torch.isfinite(value).all(), key
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.patch_embedding.weight, c.patch_embedding.weight)
    with pytest.raises(ValueError, match="encoder_dim"):
        random_beats({"encoder_dim": 3}, seed=0)


def test_random_models_tell_sounds_apart() -> None:
    model = random_beats(TINY, seed=0)
    tok = random_acoustic_tokenizer(dict(TINY, quant_n=64, quant_dim=16), seed=0)
    codebook = tok.quantize.embedding.weight
    torch.testing.assert_close(codebook.norm(dim=1), torch.ones(64))
    g = torch.Generator().manual_seed(0)
    time = torch.arange(32000) / 16000
    tone = 0.5 * torch.sin(2 * torch.pi * 440 * time)[None]
    noise = (0.3 * torch.randn(1, 32000, generator=g)).clamp(-1, 1)
    f_tone, f_noise = model.extract_features(tone)[0], model.extract_features(noise)[0]
    cos = torch.nn.functional.cosine_similarity(f_tone.mean(1), f_noise.mean(1)).item()
    assert cos < 0.95, cos
    l_tone, l_noise = tok.extract_labels(tone), tok.extract_labels(noise)
    assert l_tone.unique().numel() > 1 and l_noise.unique().numel() > 1
    assert (l_tone != l_noise).float().mean() > 0.5


def test_save_load_round_trip(tmp_path: Path, inp: dict[str, np.ndarray]) -> None:
    wave = clip(inp, 0)
    ft = random_beats(dict(TINY, finetuned_model=True, predictor_class=5), seed=1)
    ft.label_dict = {i: f"c{i}" for i in range(5)}
    save_beats_checkpoint(ft, tmp_path / "ft.pt")
    raw = torch.load(tmp_path / "ft.pt", weights_only=True)
    assert set(raw) == {"cfg", "model", "label_dict"} and raw["cfg"]["predictor_class"] == 5
    back = load_beats(tmp_path / "ft.pt")
    assert back.label_dict == ft.label_dict and not back.training
    assert torch.equal(back.extract_features(wave)[0], ft.extract_features(wave)[0])
    tok = random_acoustic_tokenizer(dict(TINY, quant_n=32, quant_dim=8), seed=2)
    save_beats_checkpoint(tok, tmp_path / "tok.pt")
    tok_back = load_acoustic_tokenizer(tmp_path / "tok.pt")
    assert torch.equal(tok_back.extract_labels(wave), tok.extract_labels(wave))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_official_file_round_trips_unchanged(tmp_path: Path) -> None:
    model = load_beats(FIXTURES / "beats_tiny.pt")
    save_beats_checkpoint(model, tmp_path / "again.pt")
    ours, official = torch.load(tmp_path / "again.pt", weights_only=True), official_ckpt("beats_tiny.pt")
    assert set(ours["model"]) == set(official["model"])
    assert all(torch.equal(ours["model"][k], official["model"][k]) for k in official["model"])
    assert {k: ours["cfg"][k] for k in official["cfg"]} == official["cfg"]


# ---------------------------------------------------------------------------------- input checks, devices
def test_bad_inputs_raise_clear_errors(model: BEATs, inp: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        model.extract_features(torch.zeros(16000))
    with pytest.raises(ValueError, match="at least 2800"):
        model.extract_features(torch.zeros(1, 2799))
    with pytest.raises(ValueError, match="shaped like wave"):
        model.extract_features(torch.zeros(2, 16000), torch.zeros(2, 15999, dtype=torch.bool))
    wave = torch.zeros(2, 16000)
    mask = torch.zeros(2, 16000, dtype=torch.bool)
    mask[1, 2000:] = True
    with pytest.raises(ValueError, match="clip 1 .* 2000 valid samples"):
        model.extract_features(wave, mask)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_placement_and_bf16_autocast(device: str, inp: dict[str, np.ndarray], exp: dict[str, np.ndarray]) -> None:
    model = load_beats(FIXTURES / "beats_tiny.pt").to(device)
    wave, mask = t(inp["waveforms"]).to(device), t(inp["padding_mask"]).to(device)
    feats, out_mask = model.extract_features(wave, mask)
    assert feats.device.type == device and out_mask.device.type == device
    for i, n in enumerate(ALONE_PATCHES):
        assert_close(feats[i : i + 1, :n], exp[f"features_alone_{i}"], E2E_MAX, E2E_MEAN)
    # A CPU waveform with a model elsewhere works too (fbank on the CPU, encoder on the model's device).
    assert model.extract_features(wave.cpu(), mask.cpu())[0].device.type == device
    low, _ = model.extract_features(wave, mask, autocast_dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    rel = (low - feats).norm() / feats.norm()
    assert 0 < rel < 5e-2, rel  # bf16 really ran (not bit-identical) and stayed close


# ------------------------------------------------------------------------------- beats.layer
def test_layer_last_is_todays_output_bitwise_and_an_earlier_layer_differs(model: BEATs, inp: dict[str, np.ndarray], exp: dict[str, np.ndarray]) -> None:
    """``layer`` = the last layer (2 of the tiny model) is the very computation of the default, padded
    batches included; layer 1 is another output, and it is the official code's layer-0 intermediate."""
    wave, mask = t(inp["waveforms"]), t(inp["padding_mask"])
    default, default_mask = model.extract_features(wave, mask)
    last, last_mask = model.extract_features(wave, mask, layer=len(model.encoder.layers))
    assert torch.equal(last, default) and torch.equal(last_mask, default_mask)
    first, _ = model.extract_features(wave, mask, layer=1)
    assert first.shape == default.shape and (first - default).abs().max() > 0.1
    assert not first[~default_mask].eq(default[~default_mask]).all()
    with torch.inference_mode():
        layer1 = model(t(exp["fbank"][2:3]), None, 1)
    assert_close(layer1, exp["dbg2_layer0"], ENCODER_TOL, ENCODER_MEAN_TOL)


@pytest.mark.parametrize("layer", [0, 3, -1, True, 1.0])
def test_layer_outside_the_model_is_one_sentence(model: BEATs, inp: dict[str, np.ndarray], layer: Any) -> None:
    with pytest.raises(ValueError, match=r"^beats.layer=.* is not a layer of this BEATs model: use 1..2 or null for the last layer$"):
        model.extract_features(clip(inp, 0), layer=layer)


def test_layer_of_a_finetuned_model_is_refused(finetuned: BEATs, inp: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="returns class probabilities"):
        finetuned.extract_features(clip(inp, 0), layer=1)
