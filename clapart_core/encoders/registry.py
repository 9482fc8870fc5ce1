"""The token types: each way this project turns audio into the discrete codes the captioner reads.

``encoder.type`` in ``params.yaml`` names one entry of :data:`TOKEN_TYPES`. Everything that
depends on it asks the entry: the settings ``configure`` resolves and checks
(:mod:`clapart_core.pipeline.config`), the audio rate ``decode`` writes, the encoder ``features``
rebuilds and what it extracts per split, the token metadata, and raw-audio captioning
(:class:`clapart_core.captioner.inference.AudioToCodes`). A new token type is one entry here.

================  =======  ==============  ==================================================
type              rate     codes from      ``features`` writes per split
================  =======  ==============  ==================================================
beats_rvq         16 kHz   RVQ codebooks   BEATs patch features ``{split}.h5`` ([T, D] fp16) of
                                           layer ``beats.layer`` (null: the last); ``tokenize``
                                           quantises them with the fitted codebooks
beats_tokenizer   16 kHz   the encoder     BEATs-AT codes ``{split}.parquet`` ([T, 1])
encodec           24 kHz   the encoder     EnCodec codes ``{split}.parquet`` ([T, N], 16 at 12 kbps)
hubert_rvq        16 kHz   RVQ codebooks   HuBERT layer features ``{split}.h5`` ([T, D] fp16, 50/s);
                                           quantised by ``tokenize`` like BEATs-RVQ
speechtokenizer   16 kHz   the encoder     SpeechTokenizer codes ``{split}.parquet`` ([T, 8], 50/s)
================  =======  ==============  ==================================================

A type whose codes come from the codebooks (``codebooks=True``) writes features with the encoder
record in the file's attributes (:func:`feature_attrs`); ``codebooks`` and ``tokenize`` serve it
unchanged. A type with its own codes writes the token Parquet itself; ``rvq.*`` never reaches it.

Importing this module imports neither torch nor an encoder (the configure stage reads it in well
under a second); the methods that run a model import its module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clapart_core.encoders.spec import (
    BEATS_FREQ_PATCHES,
    BEATS_PATCH_RATE_HZ,
    BEATS_SAMPLE_RATE,
    CLAP_SAMPLE_RATE,
    ENCODEC_SAMPLE_RATE,
    check_random_size,
    checkpoint_or_random,
    parameters_on_meta,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

# ``rvq`` below is a clapart_core.tokens.rvq.ResidualVQ, typed Any: importing that module, even for
# type checking only, would make the features stage depend on the k-means code.

__all__ = ["CLAP_SAMPLE_RATE", "TOKEN_TYPES", "Encoder", "TokenType", "encoder_from_spec", "encoder_record", "token_metadata", "token_type"]


@dataclass(frozen=True)
class TokenType:
    """One token type: its settings and, in the subclasses, how its encoder is built and run.

    Attributes:
        name: ``encoder.type`` in params.yaml, ``encoder_type`` in the token metadata.
        section: the params.yaml section holding its encoder's settings.
        encoder_name: the ``name`` of the encoder in the token metadata.
        sample_rate: Hz of the audio its encoder reads.
        codebooks: True if its codes come from the fitted RVQ codebooks (the encoder gives features,
            ``tokenize`` quantises them); False if they come straight from the encoder.
        freq_patches: codes per time step along frequency (BEATs: 8 patches of 16 mel bins; EnCodec: 1).
        checkpoint: what ``{section}.checkpoint`` names: a local ``file`` or a ``hub`` id / model dir.
        checkpoint_hint: for a file, where to download it; for a hub id, an example.
        batched: False if clips are encoded one at a time (``batch_size`` 1: padding would change codes).
        bf16: whether its section has a ``bf16`` switch.
        spec_keys: more section keys its spec records (they change the codes).
    """

    name: str
    section: str
    encoder_name: str
    sample_rate: int
    codebooks: bool
    freq_patches: int
    checkpoint: Literal["file", "hub"]
    checkpoint_hint: str
    batched: bool = True
    bf16: bool = False
    spec_keys: tuple[str, ...] = ()

    @property
    def spec_fields(self) -> frozenset[str]:
        """The keys a spec of this type may have (a model directory's ``frontend.json`` is checked against them)."""
        return frozenset(("checkpoint", "random", "seed", *self.spec_keys))

    def input_seconds(self, n_codes: int, spec: dict[str, Any]) -> float:
        """Seconds of audio whose codes fill ``n_codes`` time steps (what a captioner with
        ``max_frames = n_codes`` reads of a clip), for the encoder ``spec`` names."""
        raise NotImplementedError

    def random_parameters(self, overrides: dict[str, Any] | None) -> int:
        """Parameters of the seeded random encoder with these size overrides, counted without
        allocating (ValueError for unknown keys)."""
        raise NotImplementedError

    def check_spec_size(self, spec: dict[str, Any]) -> None:
        """Refuse, before anything is built, a random spec whose sizes are unknown keys or exceed
        :data:`clapart_core.encoders.spec.MAX_RANDOM_PARAMETERS` (a spec naming a checkpoint passes:
        the file's size bounds it)."""
        if not spec.get("checkpoint"):
            check_random_size(self.encoder_name, spec.get("random"), self.random_parameters)

    @property
    def suffix(self) -> str:
        """The features stage's file per split: features HDF5 (quantised later) or token Parquet."""
        return ".h5" if self.codebooks else ".parquet"

    def features_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """What ``configure`` writes to ``data/config/features.json``: the encoder spec and how it runs."""
        s = params[self.section]
        spec = {"checkpoint": s["checkpoint"], "random": s["random"], "seed": params["seed"], **{k: s[k] for k in self.spec_keys}}
        return {
            "type": self.name,
            "encoder": spec,
            "batch_size": s["batch_size"] if self.batched else 1,
            "device": s["device"],
            "bf16": s["bf16"] if self.bf16 else False,
        }

    # ------------------------------------------------------------------ configure's preflight
    def model_files(self, params: dict[str, Any]) -> list[tuple[str, str | None]]:
        """``(params key, value)`` of every file or hub model this type's encoder loads, for the
        preflight (:func:`clapart_core.pipeline.config.preflight`; :attr:`checkpoint` says which
        kind); a value of None loads nothing (the seeded random model)."""
        return [(f"{self.section}.checkpoint", params[self.section]["checkpoint"])]

    def check(self, params: dict[str, Any]) -> None:
        """Refuse, before any long stage, settings of this type that cannot work: ValueError with one
        sentence naming the key. Needs no torch and no model (configure runs in well under a second)."""

    # ----------------------------------------------------------------- model-facing, per subclass
    def build(self, spec: dict[str, Any], device: str, local_files_only: bool = False) -> Encoder:
        """The encoder ``spec`` names, on ``device`` (see :func:`encoder_from_spec`)."""
        raise NotImplementedError

    def extract(
        self, encoder: Encoder, audio_h5: Path, out: Path, *, batch_size: int, bf16: bool, work_dir: Path | None, keep_shards: bool, extra: dict[str, Any]
    ) -> int:
        """One split: decoded audio -> ``out`` (:attr:`suffix`); returns the number of clips."""
        raise NotImplementedError

    def codes(self, encoder: Encoder, wave: np.ndarray, rvq: Any) -> np.ndarray:
        """One clip -> ``[T, N]`` int16 codes (see :meth:`Encoder.codes`)."""
        raise NotImplementedError


@dataclass
class Encoder:
    """A token type's encoder rebuilt from its spec (what :func:`encoder_from_spec` returns).

    Attributes:
        kind: its token type.
        model: what runs: the ``BEATs`` / ``BEATsTokenizer`` module or an ``EncodecEncoder``.
        weights: the module holding its parameters (fingerprinted into every artifact).
        spec: how to rebuild exactly this encoder, as the artifacts record it.
        pretrained: False for seeded random weights.
        device: where it runs.
    """

    kind: TokenType
    model: Any
    weights: torch.nn.Module
    spec: dict[str, Any]
    pretrained: bool
    device: str

    def record(self) -> dict[str, Any]:
        """The token metadata's ``encoder``: ``{name, spec, pretrained, weights_sha256}``."""
        from clapart_core.pipeline.storage import model_fingerprint

        return encoder_record(self.kind, self.spec, self.pretrained, model_fingerprint(self.weights))

    def extract(
        self,
        audio_h5: Path,
        out: Path,
        *,
        batch_size: int,
        bf16: bool = False,
        work_dir: Path | None = None,
        keep_shards: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """The features stage's body for one split: decoded audio at :attr:`TokenType.sample_rate`
        -> ``out``, features ``[T, D]`` (HDF5) or codes ``[T, N]`` (token Parquet) per clip.

        ``extra`` adds keys to the file's metadata. Resumable: finished shards are kept in
        ``work_dir`` (default ``{out}.parts``), removed at the end unless ``keep_shards``.
        Returns the number of clips written.
        """
        run = {"batch_size": batch_size, "bf16": bf16, "work_dir": work_dir, "keep_shards": keep_shards}
        return self.kind.extract(self, Path(audio_h5), Path(out), **run, extra=extra or {})

    def codes(self, wave: np.ndarray, rvq: Any = None) -> np.ndarray:
        """One clip ``[S]`` float32 in [-1, 1] at :attr:`TokenType.sample_rate` -> codes ``[T, N]``
        int16, as the features (+ tokenize) stages make them. ``rvq``: the codebooks, for the
        types whose codes come from them. Raises ValueError for a clip too short for one code."""
        return self.kind.codes(self, wave, rvq)


def encoder_record(kind: TokenType, spec: dict[str, Any], pretrained: bool, weights_sha256: str) -> dict[str, Any]:
    """The ``encoder`` entry of the token metadata: which weights made the codes and how to rebuild them."""
    return {"name": kind.encoder_name, "spec": spec, "pretrained": pretrained, "weights_sha256": weights_sha256}


def token_metadata(
    kind: TokenType, num_codebooks: int, codebook_size: int, encoder: dict[str, Any], *, codebooks: tuple[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    """The metadata of every token Parquet (:func:`clapart_core.pipeline.storage.write_tokens`):

    ``{num_codebooks, codebook_size, [rvq_layers, codebooks_file, codebooks_fit,] encoder_type,
    encoder, freq_patches, **more}``; ``train`` and ``score`` read only this, whatever the type.
    ``freq_patches`` is the type's codes per time step (:attr:`TokenType.freq_patches`): ``train``
    starts its crops at multiples of it.

    Args:
        encoder: :func:`encoder_record`.
        codebooks: ``(file, fit info)`` of the RVQ codebooks, for types whose codes come from them
            (their first ``num_codebooks`` layers were used).
        more: e.g. the encoder's ``sample_rate`` and ``frame_rate_hz``.

    The key order is part of the file's bytes, so it is fixed here.
    """
    meta: dict[str, Any] = {"num_codebooks": num_codebooks, "codebook_size": codebook_size}
    if codebooks is not None:
        meta.update(rvq_layers=num_codebooks, codebooks_file=codebooks[0], codebooks_fit=codebooks[1])
    return {**meta, "encoder_type": kind.name, "encoder": encoder, "freq_patches": kind.freq_patches, **more}


def feature_attrs(encoder: Encoder, extra: dict[str, Any]) -> dict[str, Any]:
    """The attributes of a features file (types with codebooks): the encoder record, so that
    ``tokenize`` and ``clapart caption`` rebuild exactly this encoder and the fingerprint proves it."""
    record = encoder.record()
    return {"encoder": record["name"], "spec": record["spec"], "pretrained": record["pretrained"], "weights_sha256": record["weights_sha256"], **extra}


# --------------------------------------------------------------------------------------- BEATs
class _Beats(TokenType):
    """Both BEATs types: one clip's valid patches through the model, for captioning raw audio."""

    def _wave(self, encoder: Encoder, wave: np.ndarray) -> tuple[torch.Tensor, int]:
        import torch

        from clapart_core.encoders.beats import num_patches

        n = num_patches(len(wave))
        if n == 0:
            raise ValueError("shorter than one BEATs patch (0.175 s), nothing to caption")
        return torch.from_numpy(wave)[None].to(encoder.device), n

    def input_seconds(self, n_codes: int, spec: dict[str, Any]) -> float:
        # ceil(n / 8) time patches of 16 fbank frames; F frames need 400 + 160 (F - 1) samples
        frames = -(-int(n_codes) // self.freq_patches) * 16
        return (400 + 160 * (frames - 1)) / self.sample_rate


class _BeatsRvq(_Beats):
    """BEATs patch features, quantised by ``tokenize`` with the residual k-means codebooks (the paper)."""

    def random_parameters(self, overrides: dict[str, Any] | None) -> int:
        from clapart_core.encoders.beats import random_beats_parameters

        return random_beats_parameters(overrides)

    def build(self, spec: dict[str, Any], device: str, local_files_only: bool = False) -> Encoder:
        from clapart_core.encoders.beats import load_beats, random_beats

        model = checkpoint_or_random(spec, load_beats, random_beats, "BEATs", self.random_parameters).to(device)
        model.check_layer(spec.get("layer"))  # a spec from before beats.layer existed has none: the last layer
        return Encoder(self, model, model, spec, bool(spec.get("checkpoint")), device)

    def extract(
        self, encoder: Encoder, audio_h5: Path, out: Path, *, batch_size: int, bf16: bool, work_dir: Path | None, keep_shards: bool, extra: dict[str, Any]
    ) -> int:
        from clapart_core.encoders.beats_extract import extract_beats_features

        attrs = feature_attrs(encoder, extra)
        return extract_beats_features(
            encoder.model, audio_h5, out, batch_size=batch_size, device=encoder.device, bf16=bf16, attrs=attrs, work_dir=work_dir, keep_shards=keep_shards,
            layer=encoder.spec.get("layer"),
        )

    def codes(self, encoder: Encoder, wave: np.ndarray, rvq: Any) -> np.ndarray:
        import numpy as np

        batch, n = self._wave(encoder, wave)
        feats, _ = encoder.model.extract_features(batch, layer=encoder.spec.get("layer"))
        return rvq.encode(feats[0, :n].float().cpu()).numpy().astype(np.int16)


class _BeatsTokenizer(_Beats):
    """The official BEATs acoustic tokenizer (BEATs-AT): one code of its codebook per patch."""

    def random_parameters(self, overrides: dict[str, Any] | None) -> int:
        from clapart_core.encoders.beats import random_beats_parameters

        return random_beats_parameters(overrides, tokenizer=True)

    def build(self, spec: dict[str, Any], device: str, local_files_only: bool = False) -> Encoder:
        from clapart_core.encoders.beats import load_acoustic_tokenizer, random_acoustic_tokenizer

        model = checkpoint_or_random(spec, load_acoustic_tokenizer, random_acoustic_tokenizer, "BEATs tokenizer", self.random_parameters).to(device)
        return Encoder(self, model, model, spec, bool(spec.get("checkpoint")), device)

    def extract(
        self, encoder: Encoder, audio_h5: Path, out: Path, *, batch_size: int, bf16: bool, work_dir: Path | None, keep_shards: bool, extra: dict[str, Any]
    ) -> int:
        from clapart_core.encoders.beats_extract import extract_beats_codes

        size = int(encoder.model.config.quant_n)
        meta = token_metadata(self, 1, size, encoder.record(), sample_rate=self.sample_rate, frame_rate_hz=BEATS_PATCH_RATE_HZ, **extra)
        return extract_beats_codes(
            encoder.model, audio_h5, out, metadata=meta, batch_size=batch_size, device=encoder.device, bf16=bf16, work_dir=work_dir, keep_shards=keep_shards
        )

    def codes(self, encoder: Encoder, wave: np.ndarray, rvq: Any) -> np.ndarray:
        import numpy as np

        batch, n = self._wave(encoder, wave)
        return encoder.model.extract_labels(batch)[0, :n, None].cpu().numpy().astype(np.int16)


# ------------------------------------------------------------------------------------- EnCodec
class _Encodec(TokenType):
    """EnCodec's residual-VQ codes at ``bandwidth`` kbps (the EnCLAP baseline)."""

    def input_seconds(self, n_codes: int, spec: dict[str, Any]) -> float:
        from clapart_core.encoders.encodec import hop_length

        return int(n_codes) * hop_length(spec) / self.sample_rate  # T = ceil(S / hop)

    def random_parameters(self, overrides: dict[str, Any] | None) -> int:
        from clapart_core.encoders.encodec import random_encodec_parameters

        return random_encodec_parameters(overrides)

    def build(self, spec: dict[str, Any], device: str, local_files_only: bool = False) -> Encoder:
        from clapart_core.encoders.encodec import load_encodec, random_encodec

        codec = checkpoint_or_random(
            spec,
            lambda name: load_encodec(name, device, local_files_only),
            lambda cfg, seed: random_encodec(cfg, seed, device),
            "EnCodec",
            self.random_parameters,
        )
        # recorded: the merged random config (not the overrides), so the spec outlives a change of defaults
        return Encoder(self, codec, codec.model, {**codec.spec, "bandwidth": float(spec["bandwidth"])}, codec.pretrained, device)

    def extract(
        self, encoder: Encoder, audio_h5: Path, out: Path, *, batch_size: int, bf16: bool, work_dir: Path | None, keep_shards: bool, extra: dict[str, Any]
    ) -> int:
        from clapart_core.encoders.encodec import extract_encodec_tokens

        codec, bandwidth = encoder.model, encoder.spec["bandwidth"]
        rates = {"sample_rate": codec.sample_rate, "frame_rate_hz": codec.frame_rate}
        meta = token_metadata(self, codec.num_codebooks(bandwidth), codec.codebook_size, encoder.record(), **rates, **extra)
        return extract_encodec_tokens(codec, audio_h5, out, bandwidth=bandwidth, metadata=meta, work_dir=work_dir, keep_shards=keep_shards)

    def codes(self, encoder: Encoder, wave: np.ndarray, rvq: Any) -> np.ndarray:
        import numpy as np

        return encoder.model.encode(wave, encoder.spec["bandwidth"]).astype(np.int16)


# ------------------------------------------------------------------------------ speech encoders
# HuBERT and SpeechTokenizer read 16 kHz speech (hubert.HUBERT_SAMPLE_RATE, the published
# SpeechTokenizer config's sample_rate; tests/test_speech_tokens.py checks both against this).
SPEECH_SAMPLE_RATE = 16_000


class _HubertRvq(TokenType):
    """HuBERT layer features (default layer 6), quantised by ``tokenize`` with the residual k-means
    codebooks exactly as BEATs-RVQ: a speech-trained semantic encoder in the CLAP-ART recipe."""

    def input_seconds(self, n_codes: int, spec: dict[str, Any]) -> float:
        from transformers import HubertConfig

        from clapart_core.encoders.hubert import HUBERT_BASE_CONFIG, conv_geometry

        # T frames need field + hop (T - 1) samples; published HuBERTs keep base's 400 / 320 geometry
        overrides = {} if spec.get("checkpoint") else (spec.get("random") or {})
        field, hop = conv_geometry(HubertConfig(**{**HUBERT_BASE_CONFIG, **overrides}))
        return (field + hop * (int(n_codes) - 1)) / self.sample_rate

    def check(self, params: dict[str, Any]) -> None:
        import json

        s = params[self.section]
        layers = _hubert_depth(s["checkpoint"], s["random"])
        layer = s["layer"]
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1 or (layers is not None and layer > layers):
            where = f"1..{layers}" if layers is not None else "a positive integer"
            model = json.dumps(s["checkpoint"]) if s["checkpoint"] else "the random HuBERT (hubert.random)"
            raise ValueError(f"hubert.layer = {layer!r} is not a Transformer layer of {model} ({where})")

    def random_parameters(self, overrides: dict[str, Any] | None) -> int:
        from transformers import HubertConfig, HubertModel

        from clapart_core.encoders.hubert import HUBERT_BASE_CONFIG

        return parameters_on_meta(lambda: HubertModel(HubertConfig(**{**HUBERT_BASE_CONFIG, **(overrides or {})})))

    def build(self, spec: dict[str, Any], device: str, local_files_only: bool = False) -> Encoder:
        from clapart_core.encoders.hubert import check_layer, load_hubert, random_hubert

        def load(name: str) -> Any:
            return load_hubert(name, local_files_only=local_files_only)

        model = checkpoint_or_random(spec, load, random_hubert, "HuBERT", self.random_parameters).to(device)
        check_layer(model.config, spec["layer"])
        return Encoder(self, model, model, spec, bool(spec.get("checkpoint")), device)

    def extract(
        self, encoder: Encoder, audio_h5: Path, out: Path, *, batch_size: int, bf16: bool, work_dir: Path | None, keep_shards: bool, extra: dict[str, Any]
    ) -> int:
        from clapart_core.encoders.hubert import extract_hubert_features

        attrs = feature_attrs(encoder, extra)
        return extract_hubert_features(
            encoder.model, audio_h5, out, layer=encoder.spec["layer"], batch_size=batch_size, attrs=attrs, work_dir=work_dir, keep_shards=keep_shards
        )

    def codes(self, encoder: Encoder, wave: np.ndarray, rvq: Any) -> np.ndarray:
        import numpy as np
        import torch

        from clapart_core.encoders.hubert import stored_features

        try:
            feats = stored_features(encoder.model, wave, encoder.spec["layer"])
        except ValueError:
            raise ValueError("shorter than HuBERT's receptive field (25 ms), nothing to caption") from None
        return rvq.encode(torch.from_numpy(feats)).numpy().astype(np.int16)


def _hubert_depth(checkpoint: str | None, random: dict[str, Any] | None) -> int | None:
    """Transformer layers of the HuBERT a ``hubert`` section names, without torch: the random config's
    (12, HuBERT base's, unless overridden), a local model directory's or a cached hub model's
    ``config.json``; None where only loading the model would tell."""
    import json

    if not checkpoint:
        return int((random or {}).get("num_hidden_layers", 12))
    config = Path(checkpoint) / "config.json"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        try:
            cached = try_to_load_from_cache(checkpoint, "config.json")
        except HFValidationError:
            return None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    try:
        return int(json.loads(config.read_text())["num_hidden_layers"])
    except (ValueError, KeyError, TypeError, OSError):
        return None  # the loader names a broken config


def _speechtokenizer_config(config: str | None, checkpoint: str) -> str:
    """``speechtokenizer.config``, or where the package keeps it when null: ``config.json`` in the
    folder of ``SpeechTokenizer.pt`` (fnlp/SpeechTokenizer's layout)."""
    return config or str(Path(checkpoint).parent / "config.json")


class _SpeechTokenizer(TokenType):
    """SpeechTokenizer's own RVQ codes (8 x 1024 at 50 Hz; layer 1 distilled from HuBERT)."""

    def input_seconds(self, n_codes: int, spec: dict[str, Any]) -> float:
        from clapart_core.encoders.speechtokenizer import PUBLISHED_SPEECHTOKENIZER_CONFIG, SpeechTokenizerConfig

        # T = ceil(S / hop); a published checkpoint has the published strides (hop 320)
        overrides = {} if spec.get("checkpoint") else (spec.get("random") or {})
        return int(n_codes) * SpeechTokenizerConfig.from_dict({**PUBLISHED_SPEECHTOKENIZER_CONFIG, **overrides}).hop_length / self.sample_rate

    def model_files(self, params: dict[str, Any]) -> list[tuple[str, str | None]]:
        s = params[self.section]
        if not s["checkpoint"]:
            return []
        return [(f"{self.section}.checkpoint", s["checkpoint"]), (f"{self.section}.config", _speechtokenizer_config(s["config"], s["checkpoint"]))]

    def check(self, params: dict[str, Any]) -> None:
        s = params[self.section]
        if s["config"] and not s["checkpoint"]:
            raise ValueError("speechtokenizer.config is set but speechtokenizer.checkpoint is null: give both, or neither for the random model")

    def random_parameters(self, overrides: dict[str, Any] | None) -> int:
        from clapart_core.encoders.speechtokenizer import PUBLISHED_SPEECHTOKENIZER_CONFIG, SpeechTokenizerConfig, SpeechTokenizerEncoder

        config = SpeechTokenizerConfig.from_dict({**PUBLISHED_SPEECHTOKENIZER_CONFIG, **(overrides or {})})
        return parameters_on_meta(lambda: SpeechTokenizerEncoder(config))

    def build(self, spec: dict[str, Any], device: str, local_files_only: bool = False) -> Encoder:
        # local files only by nature: a checkpoint file and its config.json, no hub
        from clapart_core.encoders.speechtokenizer import load_speechtokenizer, random_speechtokenizer

        def load(checkpoint: str) -> Any:
            return load_speechtokenizer(_speechtokenizer_config(spec.get("config"), checkpoint), checkpoint)

        model = checkpoint_or_random(spec, load, random_speechtokenizer, "SpeechTokenizer", self.random_parameters).to(device)
        return Encoder(self, model, model, spec, bool(spec.get("checkpoint")), device)

    def extract(
        self, encoder: Encoder, audio_h5: Path, out: Path, *, batch_size: int, bf16: bool, work_dir: Path | None, keep_shards: bool, extra: dict[str, Any]
    ) -> int:
        from clapart_core.encoders.speechtokenizer import extract_speechtokenizer_codes

        config = encoder.model.config
        rates = {"sample_rate": config.sample_rate, "frame_rate_hz": config.frame_rate}
        meta = token_metadata(self, config.n_q, config.codebook_size, encoder.record(), **rates, **extra)
        return extract_speechtokenizer_codes(encoder.model, audio_h5, out, metadata=meta, batch_size=batch_size, work_dir=work_dir, keep_shards=keep_shards)

    def codes(self, encoder: Encoder, wave: np.ndarray, rvq: Any) -> np.ndarray:
        from clapart_core.encoders.speechtokenizer import speechtokenizer_codes

        if len(wave) == 0:
            raise ValueError("empty, nothing to caption")
        return speechtokenizer_codes(encoder.model, [wave])[0]


_BEATS_CHECKPOINTS = "the official checkpoint (microsoft/unilm on GitHub, beats/ README)"

TOKEN_TYPES: dict[str, TokenType] = {
    t.name: t
    for t in (
        _BeatsRvq(
            "beats_rvq", section="beats", encoder_name="beats", sample_rate=BEATS_SAMPLE_RATE, codebooks=True, freq_patches=BEATS_FREQ_PATCHES,
            checkpoint="file", checkpoint_hint=_BEATS_CHECKPOINTS, bf16=True, spec_keys=("layer",),
        ),
        _BeatsTokenizer(
            "beats_tokenizer", section="beats_tokenizer", encoder_name="beats_tokenizer", sample_rate=BEATS_SAMPLE_RATE, codebooks=False,
            freq_patches=BEATS_FREQ_PATCHES, checkpoint="file", checkpoint_hint=_BEATS_CHECKPOINTS,
        ),
        _Encodec(
            "encodec", section="encodec", encoder_name="encodec", sample_rate=ENCODEC_SAMPLE_RATE, codebooks=False, freq_patches=1,
            checkpoint="hub", checkpoint_hint="facebook/encodec_24khz", batched=False, spec_keys=("bandwidth",),
        ),
        _HubertRvq(
            "hubert_rvq", section="hubert", encoder_name="hubert", sample_rate=SPEECH_SAMPLE_RATE, codebooks=True, freq_patches=1,
            checkpoint="hub", checkpoint_hint="facebook/hubert-base-ls960", spec_keys=("layer",),
        ),
        _SpeechTokenizer(
            "speechtokenizer", section="speechtokenizer", encoder_name="speechtokenizer", sample_rate=SPEECH_SAMPLE_RATE, codebooks=False,
            freq_patches=1, checkpoint="file", checkpoint_hint="speechtokenizer_hubert_avg/SpeechTokenizer.pt and config.json of fnlp/SpeechTokenizer",
            spec_keys=("config",),
        ),
    )
}
#: the EnCLAP baseline's token type: EnCLAP checkpoints read EnCodec codes (``clapart import-enclap``)
ENCLAP_TOKEN_TYPE: TokenType = TOKEN_TYPES["encodec"]


def token_type(name: str) -> TokenType:
    """The entry of ``encoder.type`` = ``name``; ValueError naming the known types otherwise."""
    if name not in TOKEN_TYPES:
        raise ValueError(f"encoder.type={name!r} is not one of {', '.join(TOKEN_TYPES)}")
    return TOKEN_TYPES[name]


def encoder_from_spec(type_name: str, spec: dict[str, Any], device: str = "cpu", local_files_only: bool = False) -> Encoder:
    """Rebuild the encoder of token type ``type_name`` from its spec, on ``device``: the checkpoint
    when the spec names one, else the seeded random model (:func:`clapart_core.encoders.spec.checkpoint_or_random`),
    whose size is checked before it is allocated.

    ``spec``: the features stage's ``encoder`` settings, or the ``encoder.spec`` a token file or a
    model directory records (what raw-audio captioning rebuilds). ``local_files_only``: a hub id
    is read from the local Hugging Face cache only, never the network (``clapart caption``).

    Raises:
        ValueError: unknown type, a spec naming neither a checkpoint nor a seed, or random sizes
            that are unknown keys or too large.
        clapart_core.pipeline.checkpoints.CheckpointError: a BEATs checkpoint that is refused.
        clapart_core.encoders.spec.ModelNotFoundError: a hub model that is not here.
    """
    return token_type(type_name).build(spec, device, local_files_only)
