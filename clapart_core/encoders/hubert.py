"""HuBERT hidden states as frame features: 16 kHz speech -> ``[T, D]`` at 50 frames/s.

HuBERT (Hsu et al., "HuBERT: Self-Supervised Speech Representation Learning by Masked Prediction
of Hidden Units", 2021) through ``transformers.HubertModel``. Real use loads
``facebook/hubert-base-ls960`` (the fairseq ``hubert_base_ls960.pt`` converted; 12 layers, 768-d)
by hub id or local directory; tests and offline demos build the same architecture with seeded
random weights (:func:`random_hubert`), so only the weights differ. Public API::

    model = load_hubert("facebook/hubert-base-ls960")     # eval mode, float32
    feats = hubert_features(model, waves, layer=6)        # list of [S_i] 16 kHz -> list of [T_i, D]
    model = random_hubert({"num_hidden_layers": 2, ...}, seed=0)
    extract_hubert_features(model, "data/audio/sr16000/train.h5", "train.h5", layer=6, batch_size=8)  # the features stage

Frames: the convolutional feature encoder (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2) has a
receptive field of 400 samples and a hop of 320 samples, so T = (S - 400) // 320 + 1: 50 frames/s
at 16 kHz (49 for a 1 s clip, 499 for 10 s; :func:`hubert_num_frames`).

Layer: ``layer = n`` is the output of the n-th Transformer layer (1-based), as fairseq's
``extract_features(output_layer=n)`` returns it; for the post-LN base model that is
``hidden_states[n]`` of transformers. Only the first n layers run.

Padding: HuBERT base normalises its first convolution's output with a GroupNorm over the whole
(padded) time axis (``feat_extract_norm="group"``), and transformers' own documentation says
not to pass an attention mask to such models. Zero-padding a clip therefore changes all of its
features, with or without a mask, so no batch here is ever padded: :func:`hubert_features`
batches only clips of identical length (the same computation as each clip alone, up to float32
rounding of batched matrix products; tests/test_hubert.py bounds it).
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.encoders.clipwise import clip_outputs
from clapart_core.encoders.extract import check_rate, parts_path
from clapart_core.encoders.spec import ModelNotFoundError
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter, model_fingerprint

HUBERT_SAMPLE_RATE = 16_000
HUBERT_BASE_NAME = "facebook/hubert-base-ls960"

# The layer whose k-means units HuBERT's own unit recipes use for hubert-base-ls960: layer 6.
# Source: facebookresearch/textlesslib, textless/__init__.py, DENSE_MODELS["hubert-base-ls960"] =
# (HubertFeatureReader, "hubert-base-ls960", 6) -- the GSLM (fairseq examples/textless_nlp/gslm)
# HuBERT-Base + KM50/100/200 unit models; its reader calls fairseq's extract_features(output_layer=6).
# The HuBERT paper's second BASE iteration also clusters the 6th layer of the first iteration.
HUBERT_UNIT_LAYER = 6

# The features stage stores frames as float16 (as BEATs'); the codebooks are fitted on, and the
# tokens made from, those rounded values, so captioning raw audio rounds the same way.
FEATURE_DTYPE = np.float16

# Architecture of facebook/hubert-base-ls960 (its config.json; equal to transformers' HubertConfig
# defaults). Written out so that random_hubert() needs no download. Dropout and masking values
# only matter in training (the models here are always in eval mode).
HUBERT_BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 32,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "activation_dropout": 0.1,
    "attention_dropout": 0.1,
    "feat_proj_dropout": 0.1,
    "final_dropout": 0.1,
    "layerdrop": 0.1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "feat_extract_norm": "group",
    "feat_extract_activation": "gelu",
    "conv_dim": [512, 512, 512, 512, 512, 512, 512],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False,
    "apply_spec_augment": True,
    "mask_time_prob": 0.05,
    "mask_time_length": 10,
    "mask_feature_prob": 0.0,
    "mask_feature_length": 10,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def random_hubert(config_overrides: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """A ``transformers.HubertModel`` with seeded random weights, eval mode, CPU, float32.

    Args:
        config_overrides: ``HubertConfig`` keys changed from :data:`HUBERT_BASE_CONFIG` (e.g.
            ``{"hidden_size": 32, "num_hidden_layers": 2, "conv_dim": [16] * 7}`` for a tiny model;
            keep the conv kernels and strides for 50 frames/s).
        seed: same overrides and seed give identical weights; the caller's global RNG is untouched.
    """
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(**{**HUBERT_BASE_CONFIG, **(config_overrides or {})})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HubertModel(config)
    return model.eval().requires_grad_(False)


def load_hubert(name_or_dir: str = HUBERT_BASE_NAME, device: str | torch.device = "cpu", local_files_only: bool = False) -> Any:
    """``HubertModel.from_pretrained(name_or_dir)`` in eval mode, float32, on ``device``.

    Args:
        name_or_dir: a hub id (default ``facebook/hubert-base-ls960``) or a local directory holding
            ``config.json`` and the weights (``save_pretrained`` / ``hf download --local-dir``).
        device: where the model is put.

    Raises:
        ModelNotFoundError: the model is neither in the local Hugging Face cache nor reachable
            (offline, ``HF_HUB_OFFLINE=1``) nor a model directory; one sentence naming the model
            and the command that fetches it.
        ValueError: the checkpoint lacks weights of the model or has them in other shapes
            (``from_pretrained`` would silently fill them with random values).
    """
    from huggingface_hub.errors import HFValidationError
    from transformers import HubertModel

    try:
        # local_files_only: `clapart caption` never reaches the network for a model directory's hub id
        model, info = HubertModel.from_pretrained(name_or_dir, dtype=torch.float32, output_loading_info=True, local_files_only=local_files_only)
    except (OSError, HFValidationError) as err:
        # transformers turns "not cached and offline", "no such repo" and "no config.json in that
        # directory" into OSError; a malformed id is rejected before that with HFValidationError.
        local = Path(name_or_dir).expanduser().exists() or name_or_dir.startswith(("/", ".", "~"))
        local = local or name_or_dir.count("/") > 1
        fetch = f"hf download {HUBERT_BASE_NAME} --local-dir {name_or_dir}" if local else f"hf download {name_or_dir}"
        raise ModelNotFoundError(
            f"HuBERT model {name_or_dir!r} is not available here (offline or not a model directory): "
            f"on a machine with internet run `{fetch}` (or pass a local directory holding config.json and the weights)."
        ) from err
    # masked_spec_embed is the training-time mask vector (SpecAugment), never used in eval mode.
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("masked_spec_embed"))
    bad = missing + sorted(str(k) for k in info["mismatched_keys"])
    if bad:
        raise ValueError(
            f"{name_or_dir!r} is not a complete HuBERT checkpoint: {len(bad)} weights are missing or mis-shaped "
            f"(e.g. {', '.join(bad[:3])})"
        )
    return model.eval().requires_grad_(False).to(device)


def conv_geometry(config: Any) -> tuple[int, int]:
    """(receptive field, hop) in samples of the convolutional feature encoder: (400, 320) for base."""
    field, hop = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return field, hop


def hubert_num_frames(num_samples: int, config: Any) -> int:
    """Frames T of a clip of ``num_samples`` samples: each conv keeps ``(L - kernel) // stride + 1``.

    ``(S - 400) // 320 + 1`` for HuBERT base; 0 for a clip shorter than the receptive field.
    """
    length = int(num_samples)
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


def hubert_frame_rate(config: Any, sample_rate: int = HUBERT_SAMPLE_RATE) -> float:
    """Frames per second: ``sample_rate / hop`` (50.0 for HuBERT base at 16 kHz)."""
    return sample_rate / conv_geometry(config)[1]


class _StopAfterLayer(Exception):  # control flow, not an error
    """Raised by the forward hook once the wanted layer has run, so later layers never run."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def _layer_output(model: Any, input_values: torch.Tensor, layer: int) -> torch.Tensor:
    """``[B, S] -> [B, T, D]``: the output of Transformer layer ``layer`` (1-based), nothing after it."""

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        # transformers 5 returns the hidden states; 4.x returned a tuple starting with them.
        raise _StopAfterLayer(output[0] if isinstance(output, tuple) else output)

    handle = model.encoder.layers[layer - 1].register_forward_hook(hook)
    try:
        model(input_values)
    except _StopAfterLayer as stop:
        return stop.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"HuBERT layer {layer} did not run")  # e.g. layer drop in training mode


@torch.inference_mode()
def hubert_features(
    model: Any,
    waves: Sequence[np.ndarray],
    layer: int = HUBERT_UNIT_LAYER,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    normalize: bool = False,
) -> list[np.ndarray]:
    """Per-clip HuBERT features of one Transformer layer, each clip as if run alone.

    Args:
        model: a ``transformers.HubertModel`` (:func:`load_hubert`, :func:`random_hubert`); it is
            put in eval mode and, when ``device`` is given, moved there (``nn.Module.to`` is in place).
        waves: ``[S_i]`` float mono waveforms at 16 kHz, each at least the receptive field
            (400 samples = 25 ms for base) long.
        layer: 1-based Transformer layer (1..num_hidden_layers); default 6, the layer whose
            k-means units the HuBERT-base unit recipes use (see :data:`HUBERT_UNIT_LAYER`).
        batch_size: at most this many clips per forward; only clips of identical length share one
            (module docstring: padding would change the features).
        device: where to run; ``None``: the model's current device.
        normalize: standardise each clip first (fairseq's ``F.layer_norm(wave, wave.shape)``), for
            checkpoints pretrained with ``task.normalize=true`` (HuBERT large/xlarge). HuBERT base
            was pretrained on raw waveforms, so the default is False, as fairseq's and textlesslib's
            readers do for it. (For base it would change little: a bias-free first convolution
            followed by a per-channel GroupNorm is blind to a clip's offset and scale.)

    Returns:
        One float32 ``[T_i, D]`` array per clip, in input order, ``T_i = hubert_num_frames(S_i)``
        (50 frames/s), D = ``hidden_size``.

    Raises:
        ValueError: ``layer`` is out of range, ``batch_size < 1``, or a clip is not 1-D or is
            shorter than the receptive field (the message names the clip).
    """
    config = model.config
    if not 1 <= layer <= config.num_hidden_layers:
        raise ValueError(f"HuBERT layer must be in 1..{config.num_hidden_layers}, got {layer}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    field, _ = conv_geometry(config)
    arrays = []
    for i, w in enumerate(waves):
        a = np.asarray(w, dtype=np.float32)
        if a.ndim != 1 or a.size < field:
            raise ValueError(
                f"clip {i} must be a 1-D waveform of at least {field} samples (HuBERT's receptive field), "
                f"got shape {a.shape}"
            )
        arrays.append(a)
    if device is not None:
        model.to(device)
    model.eval()
    run_device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        by_length.setdefault(a.size, []).append(i)
    out: list[np.ndarray | None] = [None] * len(arrays)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            x = torch.from_numpy(np.stack([arrays[i] for i in chunk])).to(run_device)  # [b, S]
            if normalize:
                # per clip over all its samples, eps 1e-5: fairseq's F.layer_norm(x, x.shape)
                x = torch.nn.functional.layer_norm(x, x.shape[1:])
            hidden = _layer_output(model, x, layer).float().cpu().numpy()  # [b, T, D]
            for j, i in enumerate(chunk):
                out[i] = hidden[j]
    return out  # type: ignore[return-value]


def check_layer(config: Any, layer: int) -> None:
    """ValueError (one sentence) unless ``layer`` is a Transformer layer of a model of ``config``."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= config.num_hidden_layers:
        raise ValueError(f"hubert.layer = {layer!r} is not a Transformer layer of this HuBERT (1..{config.num_hidden_layers})")


def stored_features(model: Any, wave: np.ndarray, layer: int) -> np.ndarray:
    """One clip ``[S]`` at 16 kHz -> ``[T, D]`` float32 features exactly as the features stage stores
    them (rounded through :data:`FEATURE_DTYPE`); raises ValueError for a clip shorter than the
    receptive field (25 ms for base)."""
    return hubert_features(model, [wave], layer=layer)[0].astype(FEATURE_DTYPE).astype(np.float32)


def extract_hubert_features(
    model: Any,
    audio_h5: str | PathLike,
    out_h5: str | PathLike,
    *,
    layer: int = HUBERT_UNIT_LAYER,
    batch_size: int = 1,
    attrs: dict[str, Any] | None = None,
    work_dir: Path | None = None,
    keep_shards: bool = False,
) -> int:
    """The features stage for one split: every clip of a 16 kHz decoded-audio file -> HuBERT layer
    ``layer`` features ``[T, D]`` float16 (T at 50 frames/s, D = ``hidden_size``) in one ragged HDF5.

    Only clips of identical length share a forward pass (:mod:`clapart_core.encoders.clipwise`: padding
    would change the features); clips are written in stable length order. Clips shorter than the
    receptive field get ``T = 0``. ``attrs`` (the encoder record) go into the file's attributes,
    with ``sample_rate``, ``frame_rate_hz``, ``dtype`` and ``layer``. Resumable: finished groups
    are kept in ``work_dir`` (default ``{out_h5}.parts``), removed at the end unless ``keep_shards``.
    Returns the number of clips written.
    """
    audio_h5, out_h5 = Path(audio_h5), Path(out_h5)
    config = model.config
    check_layer(config, layer)
    dim, (field, _) = int(config.hidden_size), conv_geometry(config)
    info = {"sample_rate": HUBERT_SAMPLE_RATE, "frame_rate_hz": hubert_frame_rate(config), "dtype": "float16", "layer": layer, **(attrs or {})}
    device = str(next(model.parameters()).device)
    # batching moves float32 rounding, so batch_size is part of what the shards were computed from
    key = {"kind": "hubert_features", "weights": model_fingerprint(model), "attrs": info, "batch_size": batch_size, "device": device}

    def encode(waves: list[np.ndarray]) -> list[np.ndarray]:
        return [f.astype(FEATURE_DTYPE) for f in hubert_features(model, waves, layer=layer, batch_size=len(waves))]

    with RaggedReader(audio_h5) as reader:
        check_rate(reader, audio_h5, HUBERT_SAMPLE_RATE, "HuBERT")
        empty = np.zeros((0, dim), FEATURE_DTYPE)
        run = clip_outputs(
            reader, encode, batch_size=batch_size, min_samples=field, empty=empty, desc=f"hubert {audio_h5.stem}",
            key=key, work_dir=work_dir or parts_path(out_h5), keep=keep_shards,
        )
        with run as items, RaggedWriter(out_h5, (dim,), FEATURE_DTYPE, attrs=info) as writer:
            for clip_id, feats in items:
                writer.append(clip_id, feats)
        return len(reader)
