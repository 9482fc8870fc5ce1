"""BEATs audio encoder and BEATs acoustic tokenizer: an independent, readable implementation.

BEATs (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", ICML 2023) turns a
16 kHz waveform into one feature vector per 16 x 16 patch of its 128-bin log-mel filterbank:

    wave [B, S] --fbank--> [B, F, 128] --patch conv 16x16--> [B, N, E] --LayerNorm, Linear-->
    [B, N, D] --conv positional embedding, LayerNorm--> 12 deep-norm Transformer layers with a
    gated relative-position bias --> features [B, N, D]

with F = 1 + (S - 400) // 160 frames (10 ms hop) and N = 8 * (F // 16) patches, ordered
time-major (patch n = 8 t + f, f = 0 holds mel bins 0-15). A 10 s clip gives N = 496, D = 768.
The BEATs acoustic tokenizer ("BEATs-AT" in the CLAP-ART paper) is the same backbone with its
own weights plus a projection and a single 1024-entry codebook: one code per patch.

This module reads the official checkpoints as published (``{'cfg': dict, 'model': state_dict}``,
e.g. ``BEATs_iter3_plus_AS2M.pt`` and ``Tokenizer_iter3_plus_AS2M.pt``, linked from the README of
the ``beats/`` folder of https://github.com/microsoft/unilm) with identical state-dict keys,
and reproduces the official outputs (tests/test_beats.py checks it against vectors produced by
the official code). Public API::

    model = load_beats(path)                       # eval mode, CPU, float32
    feats, mask = model.extract_features(wave, padding_mask)   # [B, N, D], [B, N] | None (layer=k: layer k's)
    tok = load_acoustic_tokenizer(path)
    codes = tok.extract_labels(wave, padding_mask)              # [B, N] int64
    random_beats({...}, seed), random_acoustic_tokenizer({...}, seed)  # seeded random weights
    num_patches(num_samples), save_beats_checkpoint(model, path)

Padding -- the one deliberate deviation from the official code
---------------------------------------------------------------
The official ``extract_features`` reduces the sample-level padding mask to frames and then to
patches by "cut the tail, reshape, all()" over chunks of ``S // F`` samples and ``F // N``
frames. For a clip of L valid samples in a padded batch this marks about ceil(L / 320) patches
as valid instead of the 8 * floor(F_L / 16) patches the same clip has alone, so padded frames
leak into the attention as valid keys and **every** output of a padded clip depends on what it
was batched with (max |batched - alone| about 1 on the tiny test model).

Here (``padding_semantics="alone"``, the default) patch ``8 t + f`` of clip i is valid iff
``t < F_i // 16`` with ``F_i = 1 + (L_i - 400) // 160`` the clip's own frame count
(:func:`num_patches`). Every valid output of a padded batch then equals the output of the clip
run alone (to float32 rounding, ~1e-6), the official per-clip result. Padded positions of the
returned features are set to 0 and padded tokenizer labels to -1. The padding mask must be
right-padding (``True`` = padding, once True stays True along the row). Fine-tuned models
average the class logits over the valid patches of each clip.
``padding_semantics="official"`` reproduces the official batch-dependent masks and outputs
exactly (for comparison with features extracted by the official code).

Other differences that do not change outputs: the fbank runs batched on the waveform's device
(no Python loop, no torchaudio); attention uses ``scaled_dot_product_attention`` with the
gated relative-position bias and the key-padding mask folded into one float mask; the
per-call ``np.random.random()`` layer-drop draw of the official code (which advances NumPy's
global RNG) is gone; the tokenizer never updates its codebook-usage buffers and refuses a
codebook that was never initialised instead of running a random k-means on the first batch;
``extract_labels`` returns ``[B, N]`` instead of a flat ``B * N`` vector.

GPU and reduced precision
-------------------------
``model.to("cuda")`` moves everything; pass the waveform on any device (the filterbank runs on
the waveform's device, float32). ``extract_features(..., autocast_dtype=torch.bfloat16)`` runs
the patch encoder under ``torch.autocast`` (the filterbank, LayerNorms, the positional
convolution and the codebook search stay float32); the returned features are float32. bf16
changes features by about 1e-2 relative: use float32 for anything compared against reference
vectors. Measured on an H200 (full-size model, 10 s clips): float32 matches the CPU to 5e-4.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clapart_core.encoders.fbank import FBANK_MEAN, FBANK_STD, NUM_MEL_BINS, beats_fbank, num_frames
from clapart_core.pipeline.atomic import atomic_path
from clapart_core.pipeline.checkpoints import CheckpointError, load_weights_only

PaddingSemantics = Literal["alone", "official"]
AttnImplementation = Literal["sdpa", "eager"]

_WHERE_TO_GET = (
    "the official BEATs checkpoints (BEATs_iter3_plus_AS2M.pt, Tokenizer_iter3_plus_AS2M.pt and others) "
    "are linked from the README of the beats/ folder of https://github.com/microsoft/unilm"
)


# ---------------------------------------------------------------------------------- configs
@dataclass
class BEATsBackboneConfig:
    """Architecture of the patch encoder shared by BEATs and its tokenizer.

    Field names are the keys of the official ``cfg`` dict. Defaults are the values of the
    published ``BEATs_iter3_plus_AS2M.pt`` (90.3 M parameters). Dropouts, layer drop and the
    layer-wise gradient decay only act in training and are kept so that cfg dicts round-trip.
    """

    input_patch_size: int = 16  # patch conv kernel = stride, in fbank frames and mel bins
    embed_dim: int = 512  # E: patch conv channels
    conv_bias: bool = False  # bias in the patch conv
    encoder_layers: int = 12
    encoder_embed_dim: int = 768  # D
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12  # H; head size D / H
    activation_fn: str = "gelu"  # FFN activation
    layer_norm_first: bool = False  # pre-LN layers (then encoder.layer_norm comes last)
    deep_norm: bool = True  # residual scaled by alpha = (2 * encoder_layers) ** 0.25
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.0
    layer_wise_gradient_decay_ratio: float = 0.6
    conv_pos: int = 128  # kernel of the convolutional positional embedding, in patches
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True  # bucketed relative-position bias
    num_buckets: int = 320
    max_distance: int = 800  # in patches
    gru_rel_pos: bool = True  # query-dependent gate on the relative-position bias

    def __post_init__(self) -> None:
        if self.input_patch_size <= 0 or NUM_MEL_BINS % self.input_patch_size:
            raise ValueError(
                f"cfg input_patch_size must be a positive divisor of {NUM_MEL_BINS} (the published "
                f"models use 16), got {self.input_patch_size}"
            )
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(
                f"cfg encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(
                f"cfg encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"conv_pos_groups {self.conv_pos_groups}"
            )
        if self.activation_fn not in _ACTIVATIONS:
            raise ValueError(
                f"cfg activation_fn {self.activation_fn!r} is not supported (supported: "
                f"{', '.join(sorted(_ACTIVATIONS))}; the published models use 'gelu')"
            )
        if self.deep_norm and self.layer_norm_first:
            raise ValueError(
                "cfg deep_norm and layer_norm_first cannot both be true (the official code refuses it too)"
            )
        if self.relative_position_embedding and not (
            self.num_buckets >= 4 and self.num_buckets % 2 == 0 and self.max_distance > self.num_buckets // 4
        ):
            raise ValueError(
                f"cfg num_buckets must be even and >= 4 and max_distance > num_buckets / 4, got "
                f"num_buckets={self.num_buckets}, max_distance={self.max_distance}"
            )

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    def to_dict(self) -> dict[str, Any]:
        """The official ``cfg`` dict of this config."""
        return dataclasses.asdict(self)


@dataclass
class BEATsConfig(BEATsBackboneConfig):
    """BEATs encoder config; ``finetuned_model`` adds the AudioSet classifier head."""

    finetuned_model: bool = False
    predictor_dropout: float = 0.0
    predictor_class: int = 527


@dataclass
class BEATsTokenizerConfig(BEATsBackboneConfig):
    """BEATs acoustic tokenizer config: the backbone plus a ``quant_n`` x ``quant_dim`` codebook."""

    quant_n: int = 1024
    quant_dim: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant_n <= 0 or self.quant_dim <= 0:
            raise ValueError(f"cfg quant_n and quant_dim must be positive, got {self.quant_n}, {self.quant_dim}")


# Defaults of the official BEATsConfig / TokenizersConfig classes (microsoft/unilm beats/).
# A checkpoint cfg that omits a key gets these, as the official loader does; they differ from
# the published model's values (e.g. no relative-position bias, max_distance 1280).
_OFFICIAL_BACKBONE_DEFAULTS: dict[str, Any] = dict(
    input_patch_size=-1, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu",
    layer_norm_first=False, deep_norm=False, dropout=0.1, attention_dropout=0.1,
    activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0,
    layer_wise_gradient_decay_ratio=1.0, conv_pos=128, conv_pos_groups=16,
    relative_position_embedding=False, num_buckets=320, max_distance=1280, gru_rel_pos=False,
)
_OFFICIAL_DEFAULTS: dict[type, dict[str, Any]] = {
    BEATsConfig: dict(_OFFICIAL_BACKBONE_DEFAULTS, finetuned_model=False, predictor_dropout=0.1, predictor_class=527),
    BEATsTokenizerConfig: dict(_OFFICIAL_BACKBONE_DEFAULTS, quant_n=1024, quant_dim=256),
}


def _config_from_checkpoint(config_cls: type, cfg: dict[str, Any], source: str) -> tuple[Any, list[str]]:
    """Config of a checkpoint cfg and the cfg keys it ignores (the official config class accepts
    any key, so an extra one cannot have changed the official model)."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - known)
    values = dict(_OFFICIAL_DEFAULTS[config_cls])
    values.update({k: v for k, v in cfg.items() if k in known})
    try:
        return config_cls(**values), unknown
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: unusable cfg: {err}") from None


def _config_from_overrides(config_cls: type, overrides: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} keys in cfg_overrides: {', '.join(unknown)}")
    return config_cls(**overrides)


# ---------------------------------------------------------------------------------- helpers
def num_patches(num_samples: int, patch_size: int = 16) -> int:
    """Valid BEATs patches of a clip of ``num_samples`` 16 kHz samples (0 when too short).

    ``(F // p) * (128 // p)`` with ``F = 1 + (S - 400) // 160`` fbank frames: 8 * (F // 16) for
    the published models, e.g. 496 for 10 s; at least 2800 samples (0.175 s) give one time step.
    """
    return (num_frames(num_samples) // patch_size) * (NUM_MEL_BINS // patch_size)


def padding_masks(
    padding_mask: torch.Tensor,
    semantics: PaddingSemantics = "alone",
    patch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce a sample mask ``[B, S]`` (True = padding) to frame ``[B, F]`` and patch ``[B, N]`` masks.

    ``"alone"``: frame j of clip i is valid iff ``j < F_i``, patch ``n = 8 t + f`` iff
    ``t < F_i // 16``, with ``F_i`` the frame count of the clip's ``L_i`` valid samples; the
    mask must be right-padding. ``"official"``: the official "cut the tail, reshape, all()"
    reduction over chunks of ``S // F`` samples and ``F // N`` frames (see the module docstring).
    """
    if padding_mask.dim() != 2 or padding_mask.dtype != torch.bool:
        raise ValueError(
            f"padding_mask must be a bool tensor [B, S], got {tuple(padding_mask.shape)} {padding_mask.dtype}"
        )
    batch, samples = padding_mask.shape
    total_frames = num_frames(samples)
    freq_patches = NUM_MEL_BINS // patch_size
    time_patches = total_frames // patch_size
    total_patches = time_patches * freq_patches
    if time_patches == 0:
        needed = 400 + 160 * (patch_size - 1)
        raise ValueError(f"{samples} samples are too short for one BEATs patch (at least {needed} needed)")
    if semantics == "alone":
        if bool((padding_mask[:, :-1] & ~padding_mask[:, 1:]).any()):
            raise ValueError(
                "padding_mask must mark right padding (True = padding, no valid sample after a padded one)"
            )
        lengths = (~padding_mask).sum(dim=1)  # [B] valid samples
        clip_frames = torch.where(lengths >= 400, 1 + torch.div(lengths - 400, 160, rounding_mode="floor"), 0)
        frames = torch.arange(total_frames, device=padding_mask.device)
        frame_mask = frames[None, :] >= clip_frames[:, None]
        steps = torch.arange(time_patches, device=padding_mask.device).repeat_interleave(freq_patches)
        patch_mask = steps[None, :] >= torch.div(clip_frames, patch_size, rounding_mode="floor")[:, None]
        return frame_mask, patch_mask
    if semantics == "official":
        chunk = samples // total_frames
        frame_mask = padding_mask[:, : chunk * total_frames].reshape(batch, total_frames, chunk).all(-1)
        chunk = total_frames // total_patches
        patch_mask = frame_mask[:, : chunk * total_patches].reshape(batch, total_patches, chunk).all(-1)
        return frame_mask, patch_mask
    raise ValueError(f"padding_semantics must be 'alone' or 'official', got {semantics!r}")


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional log-bucketed relative positions: ``r = key - query`` (any shape) -> bucket ids.

    Half the buckets per direction (the upper half for r > 0); |r| below a quarter of
    ``num_buckets`` gets its own bucket, farther ones share log-spaced buckets up to
    ``max_distance``. Evaluated in float32 like the official code so that bucket boundaries
    fall exactly where the trained bias table expects them.
    """
    half = num_buckets // 2
    exact = half // 2
    direction = (relative_position > 0).long() * half
    distance = relative_position.abs()
    far = exact + (
        torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    far = far.clamp(max=half - 1)
    return direction + torch.where(distance < exact, distance, far)


_ACTIVATIONS: dict[str, Any] = {
    "gelu": F.gelu,  # exact erf form
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),  # fairseq's name for the tanh form
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


# ---------------------------------------------------------------------------------- modules
class WeightNormConv1d(nn.Module):
    """Conv1d whose kernel is ``weight_g * weight_v / ||weight_v||`` with one norm per kernel tap.

    The official model wraps its positional conv in ``torch.nn.utils.weight_norm(dim=2)``; the
    parameters keep those names (``weight_g [1, 1, K]``, ``weight_v [C_out, C_in / groups, K]``)
    so checkpoints load unchanged. ``[B, C, N] -> [B, C, N + 1]`` for an even kernel.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.padding = kernel_size // 2
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self._cached: tuple[tuple[int, ...], torch.Tensor] | None = None

    def weight(self) -> torch.Tensor:
        """``[C_out, C_in / groups, K]`` kernel.

        Outside autograd it is cached until a parameter changes (an in-place update bumps its
        ``_version``, ``.to()`` makes a new tensor): the strided norm over 4.7 M weights costs
        ~40-90 ms per call on 2 CPU cores, 10-20 % of a 10 s clip at batch 1.
        """
        if torch.is_grad_enabled():
            return self._compute_weight()
        try:
            key = (self.weight_v.data_ptr(), self.weight_v._version, self.weight_g.data_ptr(), self.weight_g._version)
        except RuntimeError:  # parameters created in inference mode have no version counter
            return self._compute_weight()
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._compute_weight())
        return self._cached[1]

    def _compute_weight(self) -> torch.Tensor:
        norm = self.weight_v.norm(p=2, dim=(0, 1), keepdim=True)  # [1, 1, K]: over out and in channels
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Kept in (at least) float32 even under autocast: it is ~6 % of the compute, and the
        # bf16 CPU kernel of some torch versions (seen with 2.11) returns wrong values for this
        # grouped 128-tap convolution.
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.weight().to(dtype)
            return F.conv1d(x.to(dtype), weight, self.bias.to(dtype), padding=self.padding, groups=self.groups)


class DropLastStep(nn.Module):
    """``[B, C, N + 1] -> [B, C, N]``: an even kernel with padding K // 2 yields one extra step."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : x.shape[2] - self.remove]


class BEATsSelfAttention(nn.Module):
    """Multi-head self-attention with BEATs' gated relative-position bias: ``[B, N, D] -> [B, N, D]``.

    scores[h, i, j] = q_i . k_j / sqrt(d) + gate[h, i] * bias[h, i, j], padded keys excluded.
    ``bias [H, N, N]`` comes from the table of layer 0 (one module shared by all layers, so
    the state dict repeats it under every layer, as in the official files); the gate is
    computed per layer from the unscaled query of each head:
    ``a, b = sigmoid(sum of grep_linear(q_h) outputs 0-3, 4-7)``, ``gate = a (b grep_a_h - 1) + 2``.
    """

    def __init__(self, config: BEATsBackboneConfig, relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.num_heads = config.encoder_attention_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.relative_attention_bias = relative_attention_bias
        # The official layer owns the gate parameters whenever gru_rel_pos is set, but only
        # uses them when there is a bias to gate.
        self.has_gate = config.gru_rel_pos
        if config.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.empty(1, self.num_heads, 1, 1))
        self.attn_implementation: AttnImplementation = "sdpa"

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]

    def gate(self, query: torch.Tensor) -> torch.Tensor:
        """``[B, H, N, d]`` unscaled query -> ``[B, H, N, 1]`` multiplier of each query's bias row."""
        batch, heads, length, _ = query.shape
        ab = torch.sigmoid(self.grep_linear(query).view(batch, heads, length, 2, 4).sum(-1))  # [B, H, N, 2]
        gate_a, gate_b = ab[..., 0:1], ab[..., 1:2]
        return gate_a * (gate_b * self.grep_a - 1.0) + 2.0

    def forward(
        self,
        x: torch.Tensor,
        position_bias: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x ``[B, N, D]``, position_bias ``[H, N, N]`` or None, key_padding_mask ``[B, N]`` (True = padding)."""
        batch, length, dim = x.shape
        query = self._split_heads(self.q_proj(x))
        key = self._split_heads(self.k_proj(x))
        value = self._split_heads(self.v_proj(x))

        # Everything added to the scores goes into one float mask [B | 1, H | 1, N, N].
        mask: torch.Tensor | None = None
        if position_bias is not None:
            mask = position_bias[None]
            if self.has_gate:
                mask = self.gate(query) * mask
        if key_padding_mask is not None and self.has_gate and mask is not None:
            # the gated mask is a fresh [B, H, N, N] tensor: mask padded keys in place instead
            # of allocating and streaming a second one per layer (94 MB at batch 8, 10 s clips)
            mask = mask.masked_fill_(key_padding_mask[:, None, None, :], float("-inf"))
        elif key_padding_mask is not None:
            padding = torch.zeros(batch, 1, 1, length, dtype=query.dtype, device=x.device)
            padding = padding.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            mask = padding if mask is None else mask + padding
        if mask is not None:
            mask = mask.to(query.dtype)

        if self.attn_implementation == "sdpa":
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        else:
            scores = (query @ key.transpose(-1, -2)) * self.head_dim**-0.5
            if mask is not None:
                scores = scores + mask
            out = torch.softmax(scores, dim=-1) @ value
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class BEATsEncoderLayer(nn.Module):
    """One Transformer layer, post-LN with deep-norm residual scaling: ``[B, N, D] -> [B, N, D]``.

    x <- LN(alpha x + Attn(x)); x <- LN(alpha x + fc2(act(fc1(x)))), alpha = (2 L)^(1/4) with
    ``deep_norm`` (alpha multiplies the residual, not the branch), else 1; pre-LN with
    ``layer_norm_first``.
    """

    def __init__(self, config: BEATsBackboneConfig, relative_attention_bias: nn.Embedding | None) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = BEATsSelfAttention(config, relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation_fn = _ACTIVATIONS[config.activation_fn]
        self.layer_norm_first = config.layer_norm_first
        self.deep_norm_alpha = (2.0 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0

    def forward(
        self,
        x: torch.Tensor,
        position_bias: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x), position_bias, key_padding_mask)
            return x + self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x * self.deep_norm_alpha + self.self_attn(x, position_bias, key_padding_mask))
        return self.final_layer_norm(x * self.deep_norm_alpha + self.fc2(self.activation_fn(self.fc1(x))))


class BEATsEncoder(nn.Module):
    """Conv positional embedding + Transformer layers: ``[B, N, D] -> [B, N, D]``.

    Padded positions are zeroed before the positional conv (so their values cannot leak into
    valid neighbours through the kernel), ``layer_norm`` is applied before the first layer
    (post-LN models) or after the last (pre-LN models).
    """

    def __init__(self, config: BEATsBackboneConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups),
            DropLastStep(config.conv_pos),
            nn.GELU(),
        )
        self.layer_norm = nn.LayerNorm(dim)
        shared_bias = (
            nn.Embedding(config.num_buckets, config.encoder_attention_heads)
            if config.relative_position_embedding
            else None
        )
        self.layers = nn.ModuleList([BEATsEncoderLayer(config, shared_bias) for _ in range(config.encoder_layers)])
        self.layer_norm_first = config.layer_norm_first
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor | None:
        """Relative-position bias of layer 0's table for ``length`` patches: ``[H, N, N]`` (or None)."""
        table = self.layers[0].self_attn.relative_attention_bias if len(self.layers) else None
        if table is None:
            return None
        positions = torch.arange(length, device=device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.num_buckets, self.max_distance)
        return table(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, layer: int | None = None) -> torch.Tensor:
        """``layer``: return the output of Transformer layer ``layer`` (1-based) instead of the last.

        As in the official code (``tgt_layer``), the layers above it are not run, and a pre-LN
        model's final ``layer_norm`` is applied only after the last layer; ``layer`` = the last
        layer is the same computation as None.
        """
        depth = len(self.layers) if layer is None else layer
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        bias = self.position_bias(x.shape[1], x.device)
        for block in self.layers[:depth]:
            x = block(x, bias, padding_mask)
        if self.layer_norm_first and depth == len(self.layers):
            x = self.layer_norm(x)
        return x


class BEATsBackbone(nn.Module):
    """Filterbank, patch embedding and encoder shared by :class:`BEATs` and :class:`BEATsTokenizer`."""

    config: BEATsBackboneConfig

    def __init__(self, config: BEATsBackboneConfig) -> None:
        super().__init__()
        self.config = config
        patch = config.input_patch_size
        self.patch_embedding = nn.Conv2d(1, config.embed_dim, kernel_size=patch, stride=patch, bias=config.conv_bias)
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        self.encoder = BEATsEncoder(config)

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def set_attn_implementation(self, name: AttnImplementation) -> None:
        """``"sdpa"`` (default, fused kernel) or ``"eager"`` (explicit softmax; same outputs, slower)."""
        if name not in ("sdpa", "eager"):
            raise ValueError(f"attn implementation must be 'sdpa' or 'eager', got {name!r}")
        for layer in self.encoder.layers:
            layer.self_attn.attn_implementation = name

    def check_layer(self, layer: int | None) -> None:
        """Raise ValueError (one sentence) unless ``layer`` is None or a layer number 1..encoder_layers."""
        count = len(self.encoder.layers)
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= count):
            raise ValueError(f"beats.layer={layer!r} is not a layer of this BEATs model: use 1..{count} or null for the last layer")

    def encode(self, fbank: torch.Tensor, patch_padding_mask: torch.Tensor | None = None, layer: int | None = None) -> torch.Tensor:
        """Normalised fbank ``[B, F, 128]`` -> patch features ``[B, N, D]``, N = (F // 16) * 8,
        of Transformer layer ``layer`` (1-based; None = the last).

        The last ``F % 16`` frames are dropped by the patch conv.
        """
        self.check_layer(layer)
        x = self.patch_embedding(fbank.unsqueeze(1))  # [B, E, F // 16, 8]
        x = x.flatten(2).transpose(1, 2)  # [B, N, E], time-major: n = 8 t + f
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x, patch_padding_mask, layer)

    def _prepare(
        self,
        wave: torch.Tensor,
        padding_mask: torch.Tensor | None,
        padding_semantics: PaddingSemantics,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate inputs, compute the fbank ``[B, F, 128]`` (on the wave's device) and patch mask ``[B, N]``."""
        if not isinstance(wave, torch.Tensor) or wave.dim() != 2 or not wave.is_floating_point():
            shape = tuple(wave.shape) if isinstance(wave, torch.Tensor) else type(wave).__name__
            raise ValueError(f"wave must be a float tensor [B, S] of 16 kHz samples, got {shape}")
        patch = self.config.input_patch_size
        min_samples = 400 + 160 * (patch - 1)
        if wave.shape[1] < min_samples:
            raise ValueError(
                f"wave has {wave.shape[1]} samples; BEATs needs at least {min_samples} "
                f"({min_samples / 16000:.3f} s at 16 kHz) for one patch"
            )
        patch_mask = None
        if padding_mask is not None:
            if padding_mask.shape != wave.shape or padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"padding_mask must be a bool tensor shaped like wave {tuple(wave.shape)}, "
                    f"got {tuple(padding_mask.shape)} {padding_mask.dtype}"
                )
            _, patch_mask = padding_masks(padding_mask.to(wave.device), padding_semantics, patch)
            empty = patch_mask.all(dim=1)
            if bool(empty.any()):
                i = int(empty.nonzero()[0])
                raise ValueError(
                    f"clip {i} of the batch has {int((~padding_mask[i]).sum())} valid samples, fewer than the "
                    f"{min_samples} one BEATs patch needs"
                )
            patch_mask = patch_mask.to(self.device)
        fbank = beats_fbank(wave.float(), FBANK_MEAN, FBANK_STD)
        return fbank.to(self.device, self.patch_embedding.weight.dtype), patch_mask


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


class BEATs(BEATsBackbone):
    """The BEATs encoder (optionally with the fine-tuned AudioSet classifier head)."""

    config: BEATsConfig

    def __init__(self, config: BEATsConfig) -> None:
        super().__init__(config)
        self.predictor = (
            nn.Linear(config.encoder_embed_dim, config.predictor_class) if config.finetuned_model else None
        )
        self.label_dict: dict[int, str] | None = None  # class names of a fine-tuned checkpoint

    def forward(self, fbank: torch.Tensor, patch_padding_mask: torch.Tensor | None = None, layer: int | None = None) -> torch.Tensor:
        """Normalised fbank ``[B, F, 128]`` -> features ``[B, N, D]`` of Transformer layer ``layer``
        (1-based, None = the last), or class probabilities ``[B, C]`` (sigmoid of the logits
        averaged over valid patches) for a fine-tuned model (whose head reads the last layer)."""
        if self.predictor is not None and layer is not None:
            raise ValueError("beats.layer selects encoder features, but this fine-tuned BEATs returns class probabilities")
        x = self.encode(fbank, patch_padding_mask, layer)
        if self.predictor is None:
            return x
        logits = self.predictor(x)  # [B, N, C]
        if patch_padding_mask is not None and bool(patch_padding_mask.any()):
            valid = (~patch_padding_mask).sum(dim=1, keepdim=True)  # [B, 1]
            logits = logits.masked_fill(patch_padding_mask[..., None], 0.0).sum(dim=1) / valid
        else:
            logits = logits.mean(dim=1)
        return torch.sigmoid(logits)

    @torch.inference_mode()
    def extract_features(
        self,
        wave: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        padding_semantics: PaddingSemantics = "alone",
        autocast_dtype: torch.dtype | None = None,
        layer: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """16 kHz waveforms ``[B, S]`` in [-1, 1] (+ right-padding mask ``[B, S]``, True = padding)
        -> (features ``[B, N, D]`` float32, patch padding mask ``[B, N]`` or None).

        ``layer``: the features of Transformer layer ``layer`` (1-based, 1..encoder_layers; None =
        the last, what "BEATs features" means in the CLAP-ART paper; ``beats.layer`` in params).
        A fine-tuned model returns class probabilities ``[B, C]`` instead of features, as the
        official code does. See the module docstring for the padding semantics.
        """
        fbank, patch_mask = self._prepare(wave, padding_mask, padding_semantics)
        with _autocast(self.device, autocast_dtype):
            out = self(fbank, patch_mask, layer)
        out = out.float()
        if self.predictor is None and patch_mask is not None and padding_semantics == "alone":
            out = out.masked_fill(patch_mask[..., None], 0.0)
        return out, patch_mask


class BEATsCodebook(nn.Module):
    """The tokenizer's codebook ``weight [K, C]`` with its training statistics (kept for the file format)."""

    def __init__(self, num_codes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.empty(num_codes, dim))
        self.register_buffer("cluster_size", torch.empty(num_codes))
        self.register_buffer("embed_avg", torch.empty(num_codes, dim))
        self.register_buffer("initted", torch.empty(1))


class BEATsQuantizer(nn.Module):
    """Nearest-codeword lookup of L2-normalised vectors: ``[B, N, C] -> [B, N]`` int64.

    Squared Euclidean distance to every codeword, ties to the lowest index (the official
    quantizer). Read-only: the usage statistics of the file are never updated.
    """

    def __init__(self, num_codes: int, dim: int) -> None:
        super().__init__()
        self.embedding = BEATsCodebook(num_codes, dim)
        self.register_buffer("cluster_size", torch.empty(num_codes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(x.float(), p=2.0, dim=-1)
        codes = self.embedding.weight.float()
        distance = z.pow(2).sum(-1, keepdim=True) + codes.pow(2).sum(-1) - 2.0 * z @ codes.T  # [B, N, K]
        return distance.argmin(dim=-1)


class BEATsTokenizer(BEATsBackbone):
    """The BEATs acoustic tokenizer: backbone -> Linear, tanh, Linear -> nearest codeword."""

    config: BEATsTokenizerConfig

    def __init__(self, config: BEATsTokenizerConfig) -> None:
        super().__init__(config)
        dim = config.encoder_embed_dim
        self.quantize_layer = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, config.quant_dim))
        self.quantize = BEATsQuantizer(config.quant_n, config.quant_dim)

    def forward(self, fbank: torch.Tensor, patch_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised fbank ``[B, F, 128]`` -> codes ``[B, N]`` int64 in ``[0, quant_n)``."""
        return self.quantize(self.quantize_layer(self.encode(fbank, patch_padding_mask)))

    @torch.inference_mode()
    def extract_labels(
        self,
        wave: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        padding_semantics: PaddingSemantics = "alone",
        autocast_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """16 kHz waveforms ``[B, S]`` (+ right-padding mask ``[B, S]``, True = padding) -> codes ``[B, N]`` int64.

        With the default ``"alone"`` semantics padded patches get -1 (the official code returns a
        flat ``B * N`` vector and codes for padded patches too).
        """
        fbank, patch_mask = self._prepare(wave, padding_mask, padding_semantics)
        with _autocast(self.device, autocast_dtype):
            projected = self.quantize_layer(self.encode(fbank, patch_mask))
        labels = self.quantize(projected)
        if patch_mask is not None and padding_semantics == "alone":
            labels = labels.masked_fill(patch_mask, -1)
        return labels


# ---------------------------------------------------------------------------------- checkpoints
def _read_checkpoint(path: str | os.PathLike, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint {path} does not exist; {_WHERE_TO_GET}.")
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("cfg"), dict) or not isinstance(ckpt.get("model"), dict):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not an official-format {what} checkpoint: expected a dict with 'cfg' (dict) and "
            f"'model' (state dict), found {found}"
        )
    return ckpt


def _short_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _build_from_checkpoint(model_cls: type, config_cls: type, path: str | os.PathLike, what: str) -> Any:
    ckpt = _read_checkpoint(path, what)
    config, ignored = _config_from_checkpoint(config_cls, ckpt["cfg"], str(path))
    # Build on the meta device: no wasted random init, and no use of the global RNG.
    with torch.device("meta"):
        model = model_cls(config)
    state = ckpt["model"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unknown:
            parts.append(f"unknown keys: {_short_list(unknown)}")
        hint = ""
        if model_cls is BEATs and any(k.startswith("quantize") for k in unknown):
            hint = " (this looks like a tokenizer checkpoint: use load_acoustic_tokenizer)"
        elif model_cls is BEATsTokenizer and any(k.startswith("quantize") for k in missing) and not any(
            k.startswith("quantize") for k in state
        ):
            hint = " (this looks like a BEATs encoder checkpoint: use load_beats)"
        raise CheckpointError(f"{path} does not match its cfg{hint}: {'; '.join(parts)}")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: state dict entry {key} is a {type(tensor).__name__}, not a tensor")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(tensor.shape)} but the cfg implies {tuple(expected[key].shape)}"
            )
    # Every layer's relative-bias entry is the same table in the official format; only one can be used.
    tables = sorted(k for k in state if k.endswith("self_attn.relative_attention_bias.weight"))
    if any(not torch.equal(state[k], state[tables[0]]) for k in tables[1:]):
        raise CheckpointError(
            f"{path}: the per-layer relative_attention_bias tables differ, but BEATs shares layer 0's "
            "table across layers"
        )
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    if isinstance(ckpt.get("label_dict"), dict):
        model.label_dict = dict(ckpt["label_dict"])
    if ignored:
        warnings.warn(f"{path}: ignoring cfg keys unknown to this implementation: {', '.join(ignored)}", stacklevel=3)
    return model.eval()


def load_beats(path: str | os.PathLike) -> BEATs:
    """Load an official BEATs checkpoint (pre-trained or fine-tuned): eval mode, CPU, float32."""
    return _build_from_checkpoint(BEATs, BEATsConfig, path, "BEATs")


def load_acoustic_tokenizer(path: str | os.PathLike) -> BEATsTokenizer:
    """Load an official BEATs acoustic tokenizer checkpoint: eval mode, CPU, float32."""
    model = _build_from_checkpoint(BEATsTokenizer, BEATsTokenizerConfig, path, "BEATs tokenizer")
    if not bool((model.quantize.embedding.initted > 0).all()):
        raise CheckpointError(
            f"{path}: the tokenizer codebook was never initialised (quantize.embedding.initted = 0); "
            "the official code would fill it by random k-means on the first batch, which is refused here"
        )
    return model


def save_beats_checkpoint(model: BEATs | BEATsTokenizer, path: str | os.PathLike) -> None:
    """Write ``model`` in the official format ``{'cfg': dict, 'model': state_dict}`` (+ ``label_dict``).

    The file is written next to ``path`` and renamed into place, so an interrupted save never
    leaves a truncated checkpoint behind. :func:`load_beats` / :func:`load_acoustic_tokenizer` read it back.
    """
    path = Path(path)
    ckpt: dict[str, Any] = {
        "cfg": model.config.to_dict(),
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
    }
    if getattr(model, "label_dict", None):
        ckpt["label_dict"] = dict(model.label_dict)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)


# ---------------------------------------------------------------------------------- random weights
@torch.no_grad()
def _init_random_weights(model: BEATsBackbone, seed: int) -> None:
    """Seeded random weights in the spirit of the official initialisation (BERT-style normal
    linears, deep-norm Xavier gains, weight-normed positional conv, unit-norm codewords), from
    an explicit generator so the global RNG is untouched."""
    g = torch.Generator().manual_seed(seed)

    def normal_(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def xavier_(t: torch.Tensor, gain: float) -> None:
        fan_out, fan_in = t.shape
        normal_(t, gain * math.sqrt(2.0 / (fan_in + fan_out)))

    config = model.config
    for module in model.modules():
        if isinstance(module, nn.Linear):
            normal_(module.weight, 0.02)
            module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, nn.Conv2d):
            normal_(module.weight, 1.0 / math.sqrt(module.weight[0].numel()))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            xavier_(module.weight, 1.0)
        elif isinstance(module, WeightNormConv1d):
            normal_(module.weight_v, math.sqrt(4.0 / (module.weight_v.shape[-1] * module.weight_v.shape[0])))
            module.weight_g.copy_(module.weight_v.norm(p=2, dim=(0, 1), keepdim=True))
            module.bias.zero_()
        elif isinstance(module, BEATsSelfAttention) and module.has_gate:
            module.grep_a.fill_(1.0)
        elif isinstance(module, BEATsCodebook):
            normal_(module.weight, 1.0)
            module.weight.copy_(F.normalize(module.weight, p=2.0, dim=-1))  # trained codebooks are unit-norm
            module.embed_avg.copy_(module.weight)
            module.cluster_size.zero_()
            module.initted.fill_(1.0)
        elif isinstance(module, BEATsQuantizer):
            module.cluster_size.zero_()
    beta = (8.0 * config.encoder_layers) ** -0.25 if config.deep_norm else 1.0
    for layer in model.encoder.layers:
        attn = layer.self_attn
        for linear, gain in ((attn.q_proj, 1.0), (attn.k_proj, 1.0), (attn.v_proj, beta), (attn.out_proj, beta),
                             (layer.fc1, beta), (layer.fc2, beta)):
            xavier_(linear.weight, gain)
    if isinstance(model, BEATsTokenizer):
        # Xavier (not 0.02) so the tanh sees unit-scale inputs and the codes spread over the codebook.
        for linear in (model.quantize_layer[0], model.quantize_layer[2]):
            xavier_(linear.weight, 1.0)


def _random_model(model_cls: type, config: BEATsBackboneConfig, seed: int) -> Any:
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to_empty(device="cpu")
    _init_random_weights(model, seed)
    return model.eval()


def random_beats(cfg_overrides: dict[str, Any] | None = None, seed: int = 0) -> BEATs:
    """The BEATs architecture with seeded random weights (eval mode, CPU, float32).

    Defaults are the published BEATs_iter3_plus_AS2M cfg; ``cfg_overrides`` changes any of its
    keys (e.g. ``{"encoder_layers": 2, "encoder_embed_dim": 64}`` for a tiny model). Same
    overrides and seed give identical weights.
    """
    return _random_model(BEATs, _config_from_overrides(BEATsConfig, cfg_overrides or {}), seed)


def random_beats_parameters(cfg_overrides: dict[str, Any] | None = None, tokenizer: bool = False) -> int:
    """Parameters of :func:`random_beats` (``tokenizer``: :func:`random_acoustic_tokenizer`) with these
    overrides, counted on the meta device without allocating; ValueError for unknown keys."""
    from clapart_core.encoders.spec import parameters_on_meta

    model_cls, config_cls = (BEATsTokenizer, BEATsTokenizerConfig) if tokenizer else (BEATs, BEATsConfig)
    config = _config_from_overrides(config_cls, cfg_overrides or {})
    return parameters_on_meta(lambda: model_cls(config))


def random_acoustic_tokenizer(cfg_overrides: dict[str, Any] | None = None, seed: int = 0) -> BEATsTokenizer:
    """The BEATs acoustic tokenizer with seeded random weights and a unit-norm random codebook.

    Defaults: the BEATs_iter3_plus_AS2M backbone with a 1024 x 256 codebook.
    """
    return _random_model(BEATsTokenizer, _config_from_overrides(BEATsTokenizerConfig, cfg_overrides or {}), seed)
