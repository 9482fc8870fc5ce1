"""SpeechTokenizer's encoder and residual vector quantizer: 16 kHz speech -> discrete codes.

SpeechTokenizer (Zhang et al., "SpeechTokenizer: Unified Speech Tokenizer for Speech Language
Models", ICLR 2024; PyPI ``speechtokenizer`` 1.0.1, checkpoints ``fnlp/SpeechTokenizer``) is an
EnCodec-style codec whose first RVQ layer is distilled from HuBERT, so layer 1 carries mostly
content ("semantic") and layers 2..n_q the rest. Only the tokenizing half is implemented here:

    wave [B, 1, S] --SEANet encoder--> e [B, D, T] --RVQ (n_q x K codewords)--> codes [n_q, B, T]

SEANet encoder (EnCodec's, with a bidirectional LSTM): Conv(1 -> C, 7); for each stride r of
``reversed(strides)``: residual block(s), ELU, Conv(C -> 2C, kernel 2r, stride r); a 2-layer
bidirectional LSTM with a skip connection; ELU, Conv(2C -> D, 7). Every convolution is
weight-normed and reflect-padded so that T = ceil(S / prod(strides)): 50 frames/s for the
published strides [8, 5, 4, 2] at 16 kHz. Each RVQ layer picks the nearest (Euclidean) codeword
of the running residual and subtracts it.

Module and parameter names follow the package's checkpoint keys (``encoder.model.{i}.conv.conv.
weight_g``, ``encoder.model.13.lstm.weight_ih_l0``, ``quantizer.vq.layers.{i}._codebook.embed``,
``transform.weight``) so an official ``SpeechTokenizer.pt`` loads strictly; its ``decoder.*`` keys
are the only ones skipped. The config dataclass reads the package's ``config.json`` keys.
Public API::

    model = load_speechtokenizer("config.json", "SpeechTokenizer.pt")   # eval mode, CPU, float32
    codes = model.encode(wave)                       # [B, 1, S] float 16 kHz -> [n_q, B, T] int64
    codes = speechtokenizer_codes(model, waves)      # list of [S_i] -> list of [T_i, n_q] int16
    model = random_speechtokenizer(config, seed)     # seeded random weights, any configuration
    extract_speechtokenizer_codes(model, audio_h5, out_parquet, metadata=..., batch_size=8)  # the features stage

Padding: the encoder ends in a bidirectional LSTM and pads by reflection at the clip's own end,
so zero-padding a short clip in a batch changes its codes (13 % of a short clip's codes differ
in the reference vectors). :func:`speechtokenizer_codes` therefore never pads: it batches only
clips of identical length, which is the same computation as encoding each one alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clapart_core.encoders.clipwise import clip_outputs
from clapart_core.encoders.extract import check_rate, parts_path
from clapart_core.pipeline.checkpoints import CheckpointError, load_weights_only
from clapart_core.pipeline.storage import RaggedReader, write_tokens

# The configuration of the published checkpoint (fnlp/SpeechTokenizer, speechtokenizer_hubert_avg):
# 8 codebooks of 1024 at 50 frames/s on 16 kHz audio.
PUBLISHED_SPEECHTOKENIZER_CONFIG: dict[str, Any] = {
    "sample_rate": 16000,
    "n_filters": 64,
    "strides": [8, 5, 4, 2],
    "dimension": 1024,
    "semantic_dimension": 768,
    "bidirectional": True,
    "dilation_base": 2,
    "residual_kernel_size": 3,
    "n_residual_layers": 1,
    "lstm_layers": 2,
    "activation": "ELU",
    "codebook_size": 1024,
    "n_q": 8,
}

_WHERE_TO_GET = (
    "the published files are speechtokenizer_hubert_avg/config.json and speechtokenizer_hubert_avg/SpeechTokenizer.pt "
    "of fnlp/SpeechTokenizer (on a machine with internet: `hf download fnlp/SpeechTokenizer "
    "speechtokenizer_hubert_avg/config.json speechtokenizer_hubert_avg/SpeechTokenizer.pt`)"
)

# Fixed in the package's SEANet encoder (not part of config.json).
_FIRST_KERNEL = 7
_LAST_KERNEL = 7
_COMPRESS = 2  # residual branches run at channels // 2
_ELU_ALPHA = 1.0


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """The model keys of SpeechTokenizer's ``config.json`` (other keys there are training settings).

    Attributes:
        sample_rate: input sample rate in Hz (the model does not resample).
        n_filters: channels of the first convolution; doubled after each downsampling.
        strides: the package's order (decoder order); the encoder downsamples by ``reversed(strides)``.
        dimension: channels D of the encoder output and of every codeword.
        semantic_dimension: output size of ``transform`` (the projection of RVQ layer 1 distilled
            towards HuBERT); no ``transform`` weights exist when it equals ``dimension``.
        bidirectional: whether the encoder's LSTM is bidirectional (its output then has 2x channels).
        dilation_base: residual block j uses dilation ``dilation_base ** j``.
        residual_kernel_size: kernel of the first convolution in each residual block.
        n_residual_layers: residual blocks before each downsampling.
        lstm_layers: stacked LSTM layers at the end of the encoder.
        activation: only ``"ELU"`` (alpha 1), the published model's.
        codebook_size: codewords K per RVQ layer.
        n_q: RVQ layers (codebooks).
    """

    sample_rate: int = 16000
    n_filters: int = 64
    strides: tuple[int, ...] = (8, 5, 4, 2)
    dimension: int = 1024
    semantic_dimension: int = 768
    bidirectional: bool = True
    dilation_base: int = 2
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    lstm_layers: int = 2
    activation: str = "ELU"
    codebook_size: int = 1024
    n_q: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if self.activation != "ELU":
            raise ValueError(f"SpeechTokenizer activation {self.activation!r} is not supported (only 'ELU')")
        if not self.strides or min(self.strides) < 1:
            raise ValueError(f"SpeechTokenizer strides must be positive integers, got {list(self.strides)}")
        if self.bidirectional and self.lstm_layers < 1:
            # The package doubles the last convolution's input for a bidirectional LSTM even when
            # there is none, which cannot run; refuse it here rather than at the first forward.
            raise ValueError("a bidirectional SpeechTokenizer encoder needs lstm_layers >= 1")
        for name in ("n_filters", "dimension", "semantic_dimension", "codebook_size", "n_q", "n_residual_layers"):
            if int(getattr(self, name)) < (0 if name == "n_residual_layers" else 1):
                raise ValueError(f"SpeechTokenizer {name} must be positive, got {getattr(self, name)}")

    @property
    def hop_length(self) -> int:
        """Input samples per code frame: ``prod(strides)`` (320 for the published model)."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Code frames per second: ``sample_rate / hop_length`` (50.0 for the published model)."""
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Code frames T for a clip of ``num_samples`` samples: ``ceil(S / prod(strides))``."""
        return -(-int(num_samples) // self.hop_length)

    def to_dict(self) -> dict[str, Any]:
        """The config in ``config.json`` form (``strides`` as a list)."""
        out = asdict(self)
        out["strides"] = list(self.strides)
        return out

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "SpeechTokenizer config") -> SpeechTokenizerConfig:
        """Read a ``config.json`` dict: every model key is required, other (training) keys are ignored.

        Raises:
            ValueError: a model key is missing or a value is unusable (one line naming ``source``).
        """
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in config]
        if missing:
            raise ValueError(f"{source} lacks the model keys {', '.join(missing)}")
        try:
            return cls(**{n: config[n] for n in names})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


# ---------------------------------------------------------------------------------- modules
class WeightNormConv1d(nn.Module):
    """``nn.Conv1d`` whose kernel is ``weight_g * weight_v / ||weight_v||``, one norm per output channel.

    The package wraps its convolutions in ``torch.nn.utils.weight_norm`` (dim 0); the parameters
    keep that function's names (``weight_g [C_out, 1, 1]``, ``weight_v [C_out, C_in, K]``,
    ``bias [C_out]``) so the checkpoint loads unchanged. No padding here (see :class:`SEANetConv1d`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self._cached: tuple[tuple[int, ...], torch.Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Conv1d``'s default initialisation, then ``weight_g = ||weight_v||`` as ``weight_norm`` sets it."""
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight_v.shape[1] * self.kernel_size)
        nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(p=2, dim=(1, 2), keepdim=True))

    def weight(self) -> torch.Tensor:
        """The effective kernel ``[C_out, C_in, K]``.

        Outside autograd it is kept until a parameter changes (an in-place update bumps its
        ``_version``; ``.to()`` or a load makes new storage): recomputing the norm of the two
        widest kernels (8 M and 15 M weights in the published model) took ~80 ms per call on 2
        CPU cores, a third of the encoder's time on a 1 s clip.
        """
        if torch.is_grad_enabled():
            return self._compute_weight()
        try:
            key = (self.weight_v.data_ptr(), self.weight_v._version, self.weight_g.data_ptr(), self.weight_g._version)
        except RuntimeError:  # tensors created under inference_mode have no version counter
            return self._compute_weight()
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._compute_weight())
        return self._cached[1]

    def _compute_weight(self) -> torch.Tensor:
        norm = self.weight_v.norm(p=2, dim=(1, 2), keepdim=True)  # [C_out, 1, 1]
        return self.weight_v * (self.weight_g / norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, L] -> [B, C_out, (L - dilation * (K - 1) - 1) // stride + 1]``."""
        return F.conv1d(x, self.weight(), self.bias, stride=self.stride, dilation=self.dilation)


class _ConvHolder(nn.Module):
    """A level of nesting that exists only for the checkpoint's key names (the package's
    ``NormConv1d``, whose norm is the identity for weight norm): ``....conv.conv.weight_g``."""

    def __init__(self, conv: WeightNormConv1d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect-pad the last axis, also for inputs no longer than the padding.

    ``F.pad(mode="reflect")`` needs ``pad < length``; like EnCodec's ``pad1d``, a too-short input
    is first extended by zeros on the right, reflected, and the added zeros cut off again, so
    the result has length ``L + left + right`` in every case.
    """
    length = x.shape[-1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra] if extra else padded


class SEANetConv1d(nn.Module):
    """EnCodec's non-causal ``SConv1d``: a weight-normed convolution with "same" reflect padding.

    The total padding ``(K - 1) * dilation - (stride - 1)`` is split right = total // 2, left =
    the rest, and the right side gets the extra samples that make the last window full, so
    ``[B, C_in, L] -> [B, C_out, ceil(L / stride)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = _ConvHolder(WeightNormConv1d(in_channels, out_channels, kernel_size, stride, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv: WeightNormConv1d = self.conv.conv
        k, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
        total = (k - 1) * dilation - (stride - 1)
        length = x.shape[-1]
        # The package computes the "full last window" padding from the undilated kernel size;
        # dilated convolutions here all have stride 1, where it is 0 either way.
        frames = math.ceil((length - k + total) / stride + 1)
        extra = (frames - 1) * stride + (k - total) - length
        right = total // 2
        return conv(_reflect_pad(x, total - right, right + extra))


class SEANetResnetBlock(nn.Module):
    """``x -> shortcut(x) + block(x)``, ``[B, C, L] -> [B, C, L]``.

    ``block``: ELU, Conv(C -> C/2, residual_kernel_size, dilation), ELU, Conv(C/2 -> C, 1); the
    shortcut is a 1x1 convolution (the package's ``true_skip=False``). The ELUs sit at indices
    0 and 2 so that the convolutions keep the checkpoint's names ``block.1`` and ``block.3``.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        hidden = channels // _COMPRESS
        self.block = nn.Sequential(
            nn.ELU(alpha=_ELU_ALPHA),
            SEANetConv1d(channels, hidden, kernel_size, dilation=dilation),
            nn.ELU(alpha=_ELU_ALPHA),
            SEANetConv1d(hidden, channels, 1),
        )
        self.shortcut = SEANetConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class SEANetLSTM(nn.Module):
    """A (bi)LSTM over time with a skip connection, in convolution layout ``[B, C, T] -> [B, C', T]``.

    ``C' = 2C`` when bidirectional: the skip then adds the input to both directions' halves
    (the package's ``x.repeat(1, 1, 2)``).
    """

    def __init__(self, channels: int, num_layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(channels, channels, num_layers, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.permute(2, 0, 1)  # [T, B, C]: the LSTM is time-major
        out, _ = self.lstm(seq)
        skip = seq.repeat(1, 1, 2) if self.bidirectional else seq
        return (out + skip).permute(1, 2, 0)


class SEANetEncoder(nn.Module):
    """The SEANet encoder, ``[B, 1, S] -> [B, dimension, ceil(S / prod(strides))]``.

    ``model`` is one ``nn.Sequential`` as in the package, so its indices are the checkpoint's
    (``encoder.model.0`` first conv, ``encoder.model.13`` the LSTM for 4 strides, ...).
    """

    def __init__(self, config: SpeechTokenizerConfig) -> None:
        super().__init__()
        nf = config.n_filters
        layers: list[nn.Module] = [SEANetConv1d(1, nf, _FIRST_KERNEL)]
        mult = 1
        for ratio in reversed(config.strides):
            for j in range(config.n_residual_layers):
                layers.append(SEANetResnetBlock(mult * nf, config.residual_kernel_size, config.dilation_base**j))
            layers += [nn.ELU(alpha=_ELU_ALPHA), SEANetConv1d(mult * nf, 2 * mult * nf, 2 * ratio, stride=ratio)]
            mult *= 2
        if config.lstm_layers:
            layers.append(SEANetLSTM(mult * nf, config.lstm_layers, config.bidirectional))
        if config.bidirectional:
            mult *= 2
        layers += [nn.ELU(alpha=_ELU_ALPHA), SEANetConv1d(mult * nf, config.dimension, _LAST_KERNEL)]
        self.model = nn.Sequential(*layers)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(wave)


class EuclideanCodebook(nn.Module):
    """One RVQ codebook: ``embed [K, D]``, nearest codeword by Euclidean distance.

    ``inited``, ``cluster_size`` and ``embed_avg`` are training state (k-means init flag and the
    EMA statistics) kept only so that the checkpoint loads strictly; encoding never changes them.
    """

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("inited", torch.zeros(1))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", torch.zeros(codebook_size, dim))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, D] -> codes [N]`` (int64): argmax of ``-(|x|^2 - 2 x.e + |e|^2)``.

        The expansion is the package's, term for term, so that float32 rounding picks the same
        codeword where two are nearly equidistant.
        """
        embed = self.embed.t()
        dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed + embed.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [...] -> codewords [..., D]``."""
        return F.embedding(codes, self.embed)


class VectorQuantization(nn.Module):
    """One RVQ layer on convolution layout: ``[B, D, T] -> codes [B, T]`` (the package's
    ``VectorQuantization`` without projections, which it only adds when codebook_dim != dim)."""

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, codebook_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, d, t = x.shape
        return self._codebook.encode(x.transpose(1, 2).reshape(b * t, d)).view(b, t)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, T] -> quantized [B, D, T]``."""
        return self._codebook.decode(codes).transpose(1, 2)


class ResidualVectorQuantization(nn.Module):
    """``layers``: the n_q :class:`VectorQuantization` layers, each coding the previous residual."""

    def __init__(self, dim: int, codebook_size: int, n_q: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([VectorQuantization(dim, codebook_size) for _ in range(n_q)])


class ResidualVectorQuantizer(nn.Module):
    """The RVQ, ``e [B, D, T] -> codes [n_q, B, T]``; ``vq`` holds the layers (checkpoint nesting)."""

    def __init__(self, config: SpeechTokenizerConfig) -> None:
        super().__init__()
        self.vq = ResidualVectorQuantization(config.dimension, config.codebook_size, config.n_q)

    def quantize(self, e: torch.Tensor, n_q: int | None = None, st: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Codes ``[n, B, T]`` (int64) and each layer's quantized vectors ``[B, D, T]`` for layers st..n_q-1.

        As in the package, quantizing from layer ``st`` starts from ``e`` itself (not from the
        residual left by layers 0..st-1).
        """
        layers = self.vq.layers[st : n_q or len(self.vq.layers)]
        residual = e
        codes, quantized = [], []
        for layer in layers:
            idx = layer.encode(residual)
            q = layer.decode(idx)
            residual = residual - q
            codes.append(idx)
            quantized.append(q)
        return torch.stack(codes), quantized


class SpeechTokenizerEncoder(nn.Module):
    """SpeechTokenizer without its decoder: ``encoder``, ``transform``, ``quantizer``.

    ``encode`` / ``forward_feature`` take and return what the package's ``SpeechTokenizer``
    methods of the same names do, so code written against the package reads the same.
    """

    def __init__(self, config: SpeechTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SEANetEncoder(config)
        # The package has a Linear only when the sizes differ (no transform.* keys otherwise).
        if config.dimension != config.semantic_dimension:
            self.transform: nn.Module = nn.Linear(config.dimension, config.semantic_dimension)
        else:
            self.transform = nn.Identity()
        self.quantizer = ResidualVectorQuantizer(config)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def n_q(self) -> int:
        return self.config.n_q

    @property
    def device(self) -> torch.device:
        return self.quantizer.vq.layers[0]._codebook.embed.device

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, n_q: int | None = None, st: int | None = None) -> torch.Tensor:
        """Codes of a batch of waveforms.

        Args:
            wave: ``[B, 1, S]`` float, mono at ``config.sample_rate`` (16 kHz), on the model's device.
                Clips of a batch share S: zero padding changes a short clip's codes (module docstring).
            n_q: use RVQ layers up to this one (default: all ``config.n_q``).
            st: first RVQ layer (default 0).

        Returns:
            LongTensor ``[n_q - st, B, T]`` with values in ``[0, codebook_size)``, T = ceil(S / prod(strides)).
        """
        return self.quantizer.quantize(self.encoder(wave), n_q=n_q, st=st or 0)[0]

    @torch.no_grad()
    def forward_feature(self, wave: torch.Tensor, layers: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The quantized vectors ``[B, D, T]`` of the listed RVQ layers (default: all), as the package's.

        Layer 0's output is the HuBERT-distilled "semantic" token embedding (see :meth:`semantic_features`).
        """
        wanted = list(layers) if layers else list(range(self.config.n_q))
        if max(wanted) >= self.config.n_q or min(wanted) < 0:
            raise ValueError(f"RVQ layers {wanted} out of range for n_q={self.config.n_q}")
        _, quantized = self.quantizer.quantize(self.encoder(wave), n_q=max(wanted) + 1)
        return [quantized[i] for i in wanted]

    @torch.no_grad()
    def semantic_features(self, wave: torch.Tensor) -> torch.Tensor:
        """``transform`` of RVQ layer 1's quantized vectors: ``[B, 1, S] -> [B, T, semantic_dimension]``.

        This is the feature SpeechTokenizer distils towards HuBERT during training.
        """
        return self.transform(self.forward_feature(wave, layers=[0])[0].transpose(1, 2))


# ---------------------------------------------------------------------------------- loading
def _short_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _build(config: SpeechTokenizerConfig) -> SpeechTokenizerEncoder:
    # On the meta device: no wasted random init of ~100 M weights, and the global RNG is untouched.
    with torch.device("meta"):
        model = SpeechTokenizerEncoder(config)
    return model.to_empty(device="cpu")


def load_speechtokenizer(config_path: str | os.PathLike, checkpoint_path: str | os.PathLike) -> SpeechTokenizerEncoder:
    """Load the package's ``config.json`` + ``SpeechTokenizer.pt`` (a plain state dict): eval mode, CPU, float32.

    The checkpoint is read with ``torch.load(weights_only=True)``. Its ``decoder.*`` keys are
    ignored (this module does not decode); every other key must match the model exactly.

    Raises:
        FileNotFoundError: a file is missing (the message says where the published files are).
        ValueError: the config is not JSON, lacks a model key or has an unusable value.
        TypeError: the config's JSON is not an object.
        CheckpointError: the checkpoint is unsafe or unreadable, is not a state dict, has missing,
            unknown or wrongly shaped keys, or holds a codebook that was never initialised.
    """
    config_path, checkpoint_path = Path(config_path), Path(checkpoint_path)
    for path, what in ((config_path, "config"), (checkpoint_path, "checkpoint")):
        if not path.is_file():
            raise FileNotFoundError(f"SpeechTokenizer {what} {path} does not exist; {_WHERE_TO_GET}.")
    try:
        raw_config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"SpeechTokenizer config {config_path} is not JSON ({err})") from None
    if not isinstance(raw_config, dict):
        raise TypeError(f"SpeechTokenizer config {config_path} is not a JSON object")
    config = SpeechTokenizerConfig.from_dict(raw_config, source=f"SpeechTokenizer config {config_path}")

    state = load_weights_only(checkpoint_path, what="SpeechTokenizer checkpoint")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = type(state).__name__ if not isinstance(state, dict) else "a dict with non-tensor values"
        raise CheckpointError(
            f"SpeechTokenizer checkpoint {checkpoint_path} is not a plain state dict of tensors (found {found})"
        )
    state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    model = _build(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        parts = ([f"missing keys {_short_list(missing)}"] if missing else []) + (
            [f"unknown keys {_short_list(unknown)}"] if unknown else []
        )
        raise CheckpointError(
            f"SpeechTokenizer checkpoint {checkpoint_path} does not match config {config_path}: {'; '.join(parts)}"
        )
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"SpeechTokenizer checkpoint {checkpoint_path} does not match config {config_path}: {k} has shape "
            f"{tuple(state[k].shape)} but the config implies {tuple(expected[k].shape)}"
            + (f" (+{len(wrong) - 1} more mismatched keys)" if len(wrong) > 1 else "")
        )
    model.load_state_dict(state, strict=True)
    # The package initialises a codebook by k-means on the first training batch; a codebook whose
    # flag is still 0 is all zeros, and the package would silently run k-means on the first input.
    uninit = [i for i, layer in enumerate(model.quantizer.vq.layers) if float(layer._codebook.inited.sum()) == 0]
    if uninit:
        raise CheckpointError(
            f"SpeechTokenizer checkpoint {checkpoint_path}: RVQ codebooks {uninit} were never initialised (inited = 0)"
        )
    return model.eval().requires_grad_(False)


def random_speechtokenizer(config: dict[str, Any] | None = None, seed: int = 0) -> SpeechTokenizerEncoder:
    """A SpeechTokenizer encoder + RVQ with seeded random weights (eval mode, CPU, float32).

    Args:
        config: ``config.json``-style keys; keys left out take the published configuration's
            values (``PUBLISHED_SPEECHTOKENIZER_CONFIG``), so ``{}`` is the published architecture.
        seed: same config and seed give identical weights; the caller's global RNG is untouched.

    The convolutions and the LSTM get PyTorch's default initialisation. The codebooks are drawn
    the way the package's k-means initialisation would place them: from the residuals the model
    itself produces on 1 s of seeded noise-plus-tone audio (plus a little noise), so that codes
    spread over the codebook instead of collapsing onto one codeword.
    """
    cfg = SpeechTokenizerConfig.from_dict({**PUBLISHED_SPEECHTOKENIZER_CONFIG, **(config or {})})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpeechTokenizerEncoder(cfg).eval()
        gen = torch.Generator().manual_seed(seed)
        t = torch.arange(cfg.sample_rate) / cfg.sample_rate
        probe = torch.stack(
            [
                0.1 * torch.randn(cfg.sample_rate, generator=gen) + 0.3 * torch.sin(2 * math.pi * f * t)
                for f in (220, 1300)
            ]
        )[:, None]  # [2, 1, S]
        with torch.no_grad():
            e = model.encoder(probe)
            residual = e.transpose(1, 2).reshape(-1, cfg.dimension)  # [N, D]
            for layer in model.quantizer.vq.layers:
                book = layer._codebook
                pick = torch.randint(0, residual.shape[0], (cfg.codebook_size,), generator=gen)
                noise = torch.randn(cfg.codebook_size, cfg.dimension, generator=gen)
                book.embed.copy_(residual[pick] + 0.3 * residual.std() * noise)
                book.embed_avg.copy_(book.embed)
                book.cluster_size.fill_(1.0)
                book.inited.fill_(1.0)
                residual = residual - book.decode(book.encode(residual))
    return model.requires_grad_(False)


# ---------------------------------------------------------------------------------- clips
@torch.no_grad()
def speechtokenizer_codes(
    model: SpeechTokenizerEncoder, waves: Sequence[np.ndarray], batch_size: int = 1
) -> list[np.ndarray]:
    """Codes of each clip as if encoded alone: list of ``[S_i]`` float 16 kHz mono -> list of ``[T_i, n_q]`` int16.

    Clips are never zero-padded (padding changes the codes, module docstring): only clips of
    exactly the same length share a forward pass, up to ``batch_size`` of them, which computes
    the same as encoding each alone (tests/test_speechtokenizer.py checks it). The model's
    device is used; waveforms must already be at ``model.sample_rate``.

    Returns:
        One ``[T_i, n_q]`` int16 array per clip in input order, ``T_i = ceil(S_i / prod(strides))``.
        int16 holds codebooks of up to 32768 codewords (the published one has 1024).

    Raises:
        ValueError: a clip is not 1-D or is empty, or the codebook does not fit int16.
    """
    if model.config.codebook_size > 2**15:
        raise ValueError(f"codebook_size {model.config.codebook_size} does not fit the int16 codes")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    arrays = []
    for i, w in enumerate(waves):
        a = np.asarray(w, dtype=np.float32)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"clip {i} must be a non-empty 1-D waveform, got shape {a.shape}")
        arrays.append(a)
    by_length: dict[int, list[int]] = {}
    for i, a in enumerate(arrays):
        by_length.setdefault(a.size, []).append(i)
    out: list[np.ndarray | None] = [None] * len(arrays)
    device = model.device
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            wave = torch.from_numpy(np.stack([arrays[i] for i in chunk]))[:, None].to(device)  # [b, 1, S]
            codes = model.encode(wave).permute(1, 2, 0).to(torch.int16).cpu().numpy()  # [b, T, n_q]
            for j, i in enumerate(chunk):
                out[i] = codes[j]
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- stage body
def extract_speechtokenizer_codes(
    model: SpeechTokenizerEncoder,
    audio_h5: str | os.PathLike,
    out_parquet: str | os.PathLike,
    *,
    metadata: dict[str, Any],
    batch_size: int = 1,
    work_dir: Path | None = None,
    keep_shards: bool = False,
) -> int:
    """The features stage for one split: every clip of a 16 kHz decoded-audio file -> SpeechTokenizer
    codes ``[T, n_q]`` int16 (``T = ceil(S / 320)``, 50 frames/s; 8 codebooks of 1024 for the published
    model) in one token Parquet with ``metadata`` (:func:`clapart_core.encoders.registry.token_metadata`).

    Only clips of identical length share a forward pass (padding would change the codes); clips are
    written in stable length order; an empty clip gets ``T = 0``. Resumable: finished groups are kept
    in ``work_dir`` (default ``{out_parquet}.parts``), removed at the end unless ``keep_shards``.
    Returns the number of clips written.
    """
    audio_h5, out_parquet = Path(audio_h5), Path(out_parquet)
    if model.config.codebook_size > 2**15:
        raise ValueError(f"codebook size {model.config.codebook_size} does not fit the token Parquet's int16 codes")

    def encode(waves: list[np.ndarray]) -> list[np.ndarray]:
        return speechtokenizer_codes(model, waves, batch_size=len(waves))

    key = {"kind": "speechtokenizer_codes", "metadata": metadata, "batch_size": batch_size, "device": str(model.device)}
    with RaggedReader(audio_h5) as reader:
        check_rate(reader, audio_h5, model.sample_rate, "SpeechTokenizer")
        empty = np.zeros((0, model.n_q), np.int16)
        run = clip_outputs(
            reader, encode, batch_size=batch_size, min_samples=1, empty=empty, desc=f"speechtokenizer {audio_h5.stem}",
            key=key, work_dir=work_dir or parts_path(out_parquet), keep=keep_shards,
        )
        with run as items:
            return write_tokens(out_parquet, items, metadata)
