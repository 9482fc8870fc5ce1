"""EnCodec codes, the EnCLAP baseline (one row of the paper's Table 1), read through transformers'
``EncodecModel`` (``facebook/encodec_24khz`` by hub id or local directory).

EnCLAP encodes at **12 kbps**: ``model.set_target_bandwidth(12.0)`` in ``data/infer_encodec.py``
and ``inference.py`` of jaeyeonkim99/EnCLAP, and ``num_rvq: 16`` in its ``EnClapBartConfig``;
i.e. 16 codebooks of 1024 entries at 75 frames/s (``floor(12000 / (75 * log2 1024))``), ``[T, 16]``
with ``T = ceil(S / 320)`` for ``S`` samples at 24 kHz.

The stage body streams a decoded-audio file (:mod:`clapart_core.corpus.decoded`) and writes the
token Parquet of :mod:`clapart_core.pipeline.storage` directly, with the token metadata every type
shares (:func:`clapart_core.encoders.registry.token_metadata`), so ``train`` and ``score`` do not
know which encoder produced the codes.

EnCodec is run on one clip at a time, as EnCLAP's ``data/infer_encodec.py`` does, so batching never
changes a clip's codes. The 24 kHz model encodes the whole clip with causal convolutions whose
right padding depends on the clip's length (a zero-padded tail would change its last frame), and
even equal-length batches move the encoder output by float rounding (~1e-7), which can flip a
nearest-codeword decision that is that close to a tie. One clip per call costs nothing on the
CPU (measured: 6 clips of 4 s alone 0.18 s, batched 0.22 s for the small random model) and
little on a GPU.

Offline use has no pretrained EnCodec weights: :func:`random_encodec` builds the real architecture
(``EncodecConfig``, 24 kHz, hop 320, 1024-entry codebooks) at a small width with seeded weights.
EnCodec's ``_init_weights`` leaves every codebook at zero (which would give code 0 everywhere),
so the random codebooks are initialised the way EnCodec itself initialises them before training,
from encoder outputs: codewords are seeded draws of the residual frames of a seeded probe signal.
The random encoder's biases are zero: random biases add a common offset ~50x larger than the
frame-to-frame variation, and the float32 distances ``|x|^2 - 2 x.e + |e|^2`` then lose the
differences between codewords to rounding (90 % of frames within 1e-5 relative of a tie,
measured), making codes arbitrary. Without the offset the median relative margin is 2e-2.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.corpus.decoded import PCM_SCALE
from clapart_core.encoders.extract import MAX_CODEBOOK_SIZE, check_rate, parts_path
from clapart_core.encoders.spec import ENCODEC_SAMPLE_RATE, ModelNotFoundError, parameters_on_meta
from clapart_core.pipeline.resume import ShardedRun, file_digest, plan_groups
from clapart_core.pipeline.storage import RaggedReader, write_tokens

log = logging.getLogger(__name__)

ENCODEC_CHECKPOINT = "facebook/encodec_24khz"
# EnCLAP's setting (see the module docstring): 16 codebooks at 75 Hz.
ENCLAP_BANDWIDTH = 12.0

# A narrow EnCodec: the 24 kHz model's module types, strides (8, 5, 4, 2 -> hop 320, 75 Hz),
# 2-layer LSTM, 1024-entry codebooks and bandwidths, at 1/8 of its width (0.25 M parameters, 0.12 M in the encoder).
RANDOM_ENCODEC_DEFAULTS: dict[str, Any] = {
    "num_filters": 4,
    "hidden_size": 32,
    "num_lstm_layers": 2,
}
# Probe signal for the random codebooks: 16 s gives 1200 encoder frames to draw codewords from.
_PROBE_SECONDS = 16.0
_PROBE_SEGMENT_S = 0.25


@dataclass
class EncodecEncoder:
    """An EnCodec model plus its feature extractor, encoding mono 24 kHz clips to codes.

    Attributes:
        model: ``transformers.EncodecModel`` in eval mode (on the device it runs on).
        feature_extractor: ``EncodecFeatureExtractor`` (checks the rate, shapes the input).
        name: hub id / directory, or ``"random"``.
        pretrained: ``False`` for the seeded random model.
        spec: how to rebuild exactly this model: ``{"checkpoint": name}`` or
            ``{"random": config overrides, "seed": seed}`` (recorded in the token metadata).
    """

    model: Any
    feature_extractor: Any
    name: str
    pretrained: bool
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        config = self.model.config
        # Chunked models (encodec_48khz) return overlapping 1 s chunks, stereo ones need 2 channels:
        # neither gives one code sequence per mono clip.
        if config.chunk_length_s is not None or config.audio_channels != 1:
            raise ValueError(
                f"EnCodec model {self.name!r} encodes in chunks or in stereo (chunk_length_s={config.chunk_length_s}, "
                f"audio_channels={config.audio_channels}); only whole-clip mono models such as {ENCODEC_CHECKPOINT} are supported"
            )

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    @property
    def frame_rate(self) -> int:
        """Code frames per second (75 for the 24 kHz model)."""
        return int(self.model.config.frame_rate)

    @property
    def hop_length(self) -> int:
        """Samples per code frame (320 for the 24 kHz model)."""
        return int(self.model.config.hop_length)

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.codebook_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_codebooks(self, bandwidth: float) -> int:
        """Codebooks used at ``bandwidth`` kbps (2 at 1.5, 8 at 6, 16 at 12 for the 24 kHz model)."""
        allowed = [float(b) for b in self.model.config.target_bandwidths]
        if float(bandwidth) not in allowed:
            raise ValueError(f"EnCodec model {self.name!r} does not support bandwidth {bandwidth} kbps; choose one of {allowed}")
        return int(self.model.quantizer.get_num_quantizers_for_bandwidth(float(bandwidth)))

    def num_frames(self, num_samples: int) -> int:
        """Code frames of a clip of ``num_samples`` samples: ``ceil(S / hop)``."""
        return -(-int(num_samples) // self.hop_length)

    @torch.inference_mode()
    def encode(self, wave: np.ndarray | torch.Tensor, bandwidth: float) -> np.ndarray:
        """One clip ``[S]`` float32 in [-1, 1] at 24 kHz -> codes ``[T, N]`` int64 in ``[0, codebook_size)``.

        ``T = ceil(S / 320)`` (75 frames/s), ``N = num_codebooks(bandwidth)``; an empty clip gives ``T = 0``.
        """
        wave = torch.as_tensor(wave, dtype=torch.float32)
        if wave.dim() != 1:
            raise ValueError(f"wave must be one mono clip [S], got shape {tuple(wave.shape)}")
        n = self.num_codebooks(bandwidth)
        if wave.shape[0] == 0:
            return np.zeros((0, n), dtype=np.int64)
        inputs = self.feature_extractor(wave.cpu().numpy(), sampling_rate=self.sample_rate, return_tensors="pt")
        out = self.model.encode(
            inputs["input_values"].to(self.device),  # [1, 1, S]
            inputs["padding_mask"].to(self.device),  # [1, S], all valid
            bandwidth=float(bandwidth),
            return_dict=True,
        )
        codes = out.audio_codes  # [chunks = 1, 1, N, T] for a whole-clip model
        return codes[0, 0].T.cpu().numpy().astype(np.int64)


# ---------------------------------------------------------------------------------- construction
def _probe_signal(generator: torch.Generator, sample_rate: int) -> torch.Tensor:
    """A seeded varied test signal ``[S]``: short segments, each a sine of random frequency plus
    white noise, at random levels, so the encoder frames cover tones, noise and loudness."""
    seg = int(_PROBE_SEGMENT_S * sample_rate)
    n_seg = int(_PROBE_SECONDS / _PROBE_SEGMENT_S)
    t = torch.arange(seg, dtype=torch.float32) / sample_rate
    parts = []
    for _ in range(n_seg):
        freq, tone, noise, level = torch.rand(4, generator=generator).tolist()
        sine = torch.sin(2 * math.pi * (50.0 * 200.0**freq) * t)  # 50 Hz .. 10 kHz, log-uniform
        x = tone * sine + noise * torch.randn(seg, generator=generator)
        parts.append(x / x.abs().max().clamp_min(1e-6) * 10.0 ** (-3.0 * level))  # -60 .. 0 dBFS peak
    return torch.cat(parts)


@torch.no_grad()
def _init_random_codebooks(model: Any, generator: torch.Generator) -> None:
    """Fill each RVQ layer with codewords drawn from its own input (residual) frames of the probe
    signal, plus a little seeded jitter so that repeated draws are distinct codewords."""
    probe = _probe_signal(generator, int(model.config.sampling_rate))
    frames = model.encoder(probe[None, None, :])[0].T  # [T, D]
    residual = frames
    for layer in model.quantizer.layers:
        book = layer.codebook
        k = book.embed.shape[0]
        pick = torch.randint(residual.shape[0], (k,), generator=generator)
        jitter = torch.randn(k, residual.shape[1], generator=generator) * residual.std(dim=0) * 0.1
        embed = residual[pick] + jitter
        book.embed.copy_(embed)
        book.embed_avg.copy_(embed)
        book.cluster_size.fill_(1.0)
        codes = layer.encode(residual.T[None])  # [1, T]
        residual = residual - layer.decode(codes)[0].T


def _random_config(overrides: dict[str, Any] | None) -> Any:
    """The ``EncodecConfig`` of a random model; ValueError naming keys EncodecConfig does not have
    (it would silently keep them as attributes)."""
    from transformers import EncodecConfig

    cfg = {**RANDOM_ENCODEC_DEFAULTS, **(overrides or {})}
    unknown = sorted(set(cfg) - set(EncodecConfig().to_dict()))
    if unknown:
        raise ValueError(f"unknown EncodecConfig keys in the random EnCodec config: {', '.join(unknown)}")
    return EncodecConfig(sampling_rate=ENCODEC_SAMPLE_RATE, **cfg)


def random_encodec_parameters(overrides: dict[str, Any] | None = None) -> int:
    """Parameters of :func:`random_encodec` with these overrides, counted on the meta device without allocating."""
    from transformers import EncodecModel

    config = _random_config(overrides)
    return parameters_on_meta(lambda: EncodecModel(config))


def hop_length(spec: dict[str, Any]) -> int:
    """Samples per code frame of the EnCodec a spec names (320 for the 24 kHz model), from the
    spec alone: the product of its ``upsampling_ratios``."""
    from transformers import EncodecConfig

    ratios = (spec.get("random") or {}).get("upsampling_ratios") if not spec.get("checkpoint") else None
    return int(math.prod(ratios or EncodecConfig().upsampling_ratios))


def random_encodec(overrides: dict[str, Any] | None = None, seed: int = 0, device: str | torch.device = "cpu") -> EncodecEncoder:
    """A seeded, randomly initialised ``EncodecModel`` of the 24 kHz architecture at a small width.

    ``overrides`` changes any ``EncodecConfig`` key of :data:`RANDOM_ENCODEC_DEFAULTS` (or others,
    e.g. ``codebook_size``); the same overrides and seed give identical weights. The global torch
    RNG is left untouched. ``spec`` records the merged config, so ``random_encodec(spec["random"],
    spec["seed"])`` rebuilds the same model even if the defaults change.
    """
    from transformers import EncodecFeatureExtractor, EncodecModel

    cfg = {**RANDOM_ENCODEC_DEFAULTS, **(overrides or {})}
    config = _random_config(overrides)
    # fork_rng: transformers' weight init draws from the global RNG; seed it without side effects.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncodecModel(config).eval()
    with torch.no_grad():
        for name, param in model.encoder.named_parameters():
            if name.endswith("bias") or ".bias_" in name:  # conv biases, LSTM bias_ih/bias_hh (module docstring)
                param.zero_()
    _init_random_codebooks(model, torch.Generator().manual_seed(seed))
    log.warning("EnCodec: seeded random weights (%s, seed %d), not a pretrained codec", cfg, seed)
    model = model.to(device)
    fe = EncodecFeatureExtractor(feature_size=1, sampling_rate=ENCODEC_SAMPLE_RATE)
    return EncodecEncoder(model, fe, "random", pretrained=False, spec={"random": cfg, "seed": seed})


def load_encodec(name_or_path: str, device: str | torch.device = "cpu", local_files_only: bool = False) -> EncodecEncoder:
    """Load a pretrained ``EncodecModel`` + feature extractor by hub id or local directory
    (``local_files_only``: a hub id only from the local Hugging Face cache, never the network).

    Raises:
        ModelNotFoundError: the model is neither cached/downloadable nor a model directory.
        ValueError: it is not a complete EnCodec checkpoint, or a chunked or stereo one
            (e.g. ``facebook/encodec_48khz``).
    """
    from transformers import AutoFeatureExtractor, EncodecModel

    try:
        model, info = EncodecModel.from_pretrained(name_or_path, output_loading_info=True, local_files_only=local_files_only)
        fe = AutoFeatureExtractor.from_pretrained(name_or_path, local_files_only=local_files_only)
    except OSError as err:
        if local_files_only:  # a model directory named it: say what is missing, advise no download of a name it chose
            raise ModelNotFoundError(f"EnCodec model {name_or_path!r} is not in the local Hugging Face cache, and it is never downloaded here") from None
        raise ModelNotFoundError(
            f"EnCodec model {name_or_path!r} is not available here (offline or not a model directory): "
            f"on a machine with internet run `hf download {ENCODEC_CHECKPOINT}` (the EnCLAP codec; "
            "`huggingface-cli download` in huggingface_hub < 1.0), or set encodec.checkpoint to a local "
            "directory holding its config.json, preprocessor_config.json and weights."
        ) from err
    # from_pretrained fills weights a checkpoint lacks with random ones and only logs it: refuse that,
    # or a wrong directory would run as a "pretrained" codec.
    bad = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if bad:
        raise ValueError(
            f"{name_or_path!r} is not a complete EnCodec checkpoint: {len(bad)} weights are missing or mis-shaped "
            f"(e.g. {', '.join(bad[:3])})"
        )
    model = model.eval().to(device)
    return EncodecEncoder(model, fe, str(name_or_path), pretrained=True, spec={"checkpoint": str(name_or_path)})


# ---------------------------------------------------------------------------------- stage bodies
def extract_encodec_tokens(
    encoder: EncodecEncoder,
    audio_h5: Path,
    out_parquet: Path,
    *,
    bandwidth: float,
    metadata: dict[str, Any],
    work_dir: Path | None = None,
    keep_shards: bool = False,
) -> int:
    """EnCodec codes for every clip of one decoded-audio file: ``[S] @ 24 kHz -> [T, N]``, one token Parquet.

    ``T = ceil(S / 320)`` (75 frames/s), ``N = encoder.num_codebooks(bandwidth)`` (16 at EnCLAP's
    12 kbps). Clips are encoded one at a time, in file order (see the module docstring).
    ``metadata`` is the file's whole token metadata
    (:func:`clapart_core.encoders.registry.token_metadata`). Returns the number of clips written.
    Resumable: finished groups of clips are kept in ``work_dir`` (default ``{out_parquet}.parts``;
    :mod:`clapart_core.pipeline.resume`), and a rerun after a kill encodes only the missing ones. The shards
    are removed once ``out_parquet`` is written, unless ``keep_shards`` (the caller removes them).
    """
    audio_h5, out_parquet = Path(audio_h5), Path(out_parquet)
    reader = RaggedReader(audio_h5)
    with reader:
        check_rate(reader, audio_h5, encoder.sample_rate, f"EnCodec model {encoder.name!r}")
        if encoder.codebook_size > MAX_CODEBOOK_SIZE:
            raise ValueError(f"codebook size {encoder.codebook_size} does not fit the token Parquet's int16 codes")

        def compute(group: list[list[int]]) -> Iterator[tuple[str, np.ndarray]]:
            for (i,) in group:  # one clip per batch (see the module docstring)
                clip_id = reader.clip_ids[i]
                yield clip_id, encoder.encode(reader[clip_id].astype(np.float32) / PCM_SCALE, bandwidth).astype(np.int16)

        key = {"kind": "encodec_tokens", "metadata": metadata, "input": file_digest(audio_h5), "device": str(encoder.device), "torch": torch.__version__}
        groups = plan_groups([[i] for i in range(len(reader))])
        with ShardedRun(work_dir or parts_path(out_parquet), key, reader.clip_ids, groups, compute, f"encodec {audio_h5.stem}", keep_shards) as items:
            return write_tokens(out_parquet, items, metadata)

