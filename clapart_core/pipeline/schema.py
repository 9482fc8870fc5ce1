"""The typed schema of ``params.yaml``: every key, its type and range, and the rules between keys.

The ``configure`` stage validates the whole file with :func:`validate_params`, every ``finetune``
phase overlaid in turn, before any long stage runs. dvc.yaml gives ``configure`` the whole file as
its params, so any change (a typo added by ``dvc exp run -S +rvq.layer=8`` included) reruns it
and fails there in one line::

    params.yaml: unknown key rvq.layer; did you mean rvq.layers?

Types are strict: ``seed: abc``, ``epochs: 2.5`` or ``bf16: 1`` are refused rather than converted
(a float key takes an integer). Every key is required: the profiles in ``profiles/`` hold them
all, so ``dvc exp run -S key=value`` works in each. To add a key, add one line to its section
class below (``name: type = Field(ge=...)``), and the key to ``params.yaml`` and every profile.
A new section (a token type's encoder settings) is a class and one line in :class:`Params`.

The ``random`` blocks (sizes of the seeded random encoders) are free-form: their keys are those
of the encoder's own config. What needs the disk (a checkpoint exists, a corpus root is a
folder, a pretrained BART has enough positions) is checked by
:func:`clapart_core.pipeline.config.preflight`, after this.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from clapart_core.encoders.registry import TOKEN_TYPES
from clapart_core.pipeline.errors import ParamsError
from clapart_core.pipeline.params import AUDIOCAPS_VERSIONS, CLOTHO_VERSIONS, DATA_SOURCES, FINETUNE_SECTIONS, merge_params

__all__ = ["Params", "validate_params"]

#: the bandwidths (kbps) EnCodec 24 kHz is trained for (its config's ``target_bandwidths``)
ENCODEC_BANDWIDTHS = (1.5, 3.0, 6.0, 12.0, 24.0)
#: codes are stored as int16 (clapart_core/pipeline/storage.py): ids 0..32767
MAX_CODEBOOK_SIZE = 2**15
#: the smallest BPE vocabulary ``train_caption_tokenizer`` builds: 256 bytes + 4 specials + <mask>
MIN_TRAINED_VOCAB = 261
#: a phase name is part of stage names (``finetune@NAME``) and of paths (``data/finetune/NAME``)
_PHASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _cross(key: str, value: Any, message: str) -> PydanticCustomError:
    """An error of a rule between keys, reported at ``key`` (a key of the section that raises it)."""
    return PydanticCustomError("cross_key", "{message}", {"key": key, "value": value, "message": message})


def _device(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return name


def _power_of_two(size: int) -> int:
    # Nothing in the k-means or the captioner needs a power of two; every published setting is one
    # (the paper and EnCodec 1024, the demo 256) and the rule catches typos such as 3 for 32 or 1204.
    if size & (size - 1):
        raise ValueError(f"must be a power of two (e.g. {2 ** round(math.log2(size))})")
    return size


PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy's seeds: 0 .. 2^32 - 1
Device = Annotated[str, AfterValidator(_device)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
#: a path or a Hugging Face id; null for "none" (a random encoder, a BART from scratch)
ModelName = Annotated[str, Field(min_length=1)] | None


class Section(BaseModel):
    """A mapping of params.yaml: unknown keys refused, no silent conversion of types."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ----------------------------------------------------------------------------------------- data
class DemoData(Section):
    n_clips: int = Field(ge=7)  # the 70/15/15 split must give every split a clip
    clip_seconds: float = Field(ge=3.0)  # three events per clip


class ClothoData(Section):
    version: Literal[CLOTHO_VERSIONS]


class AudioCapsData(Section):
    version: Literal[AUDIOCAPS_VERSIONS]
    sample_rate: int = Field(ge=8000, le=96000)  # the rate of aac-datasets' audio_{rate}Hz folder
    audio_format: Literal["flac", "wav", "ogg", "mp3"] = "flac"  # optional: aac-datasets' default


class Data(Section):
    source: Literal[DATA_SOURCES]
    root: str = Field(min_length=1)
    strict: bool
    allow_unlisted: bool
    download: bool
    clotho: ClothoData
    audiocaps: AudioCapsData
    demo: DemoData

    @model_validator(mode="after")
    def _download_applies(self) -> Data:
        if self.download and self.source not in ("clotho", "audiocaps"):
            raise _cross("download", True, f"applies to clotho and audiocaps only, not data.source = {self.source!r}")
        return self


class Decode(Section):
    max_seconds: float | None = Field(gt=0.0)  # null: keep whole clips
    on_error: Literal["fail", "skip"]


class Encoder(Section):
    type: str

    @field_validator("type")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in TOKEN_TYPES:
            raise ValueError(f"is not a token type; choose one of {', '.join(TOKEN_TYPES)}")
        return name


# ------------------------------------------------------------------------------ encoder settings
class EncoderSettings(Section):
    """A token type's encoder: published weights, or a seeded random model of ``random``'s size."""

    checkpoint: ModelName
    random: dict[str, Any]
    batch_size: PositiveInt
    device: Device


class Hubert(EncoderSettings):
    layer: PositiveInt  # the Transformer layer quantised (the preflight checks it exists in the model)


class SpeechTokenizer(EncoderSettings):
    config: str | None  # its config.json; None: beside the checkpoint


class Beats(EncoderSettings):
    bf16: bool
    layer: PositiveInt | None  # None: the last layer (what "BEATs features" means in the paper)


class Encodec(Section):
    checkpoint: ModelName
    random: dict[str, Any]
    bandwidth: float
    device: Device

    @field_validator("bandwidth")
    @classmethod
    def _trained_bandwidth(cls, kbps: float) -> float:
        if kbps not in ENCODEC_BANDWIDTHS:
            raise ValueError(f"is not a bandwidth EnCodec 24 kHz has: {', '.join(f'{b:g}' for b in ENCODEC_BANDWIDTHS)} kbps")
        return kbps


class Clap(Section):
    checkpoint: ModelName
    random: dict[str, Any]  # sizes of the seeded random CLAP (checkpoint null); checked before it is built
    batch_size: PositiveInt
    device: Device


# ----------------------------------------------------------------------------------- codebooks
class KMeans(Section):
    niter: PositiveInt
    max_samples: PositiveInt
    seed: Seed
    gpu: Literal["auto"] | bool  # auto: FAISS GPU k-means when faiss-gpu is installed and a GPU is visible


class Extract(Section):
    """How many processes the extraction stages (features, clap, tokenize) share the clips among."""

    num_processes: PositiveInt


class Rvq(Section):
    max_layers: PositiveInt
    codebook_size: Annotated[int, Field(ge=2, le=MAX_CODEBOOK_SIZE), AfterValidator(_power_of_two)]
    layers: PositiveInt
    kmeans: KMeans
    codebooks_file: Annotated[str, Field(min_length=1)] | None  # an rvq.npz fitted elsewhere; null = fit here

    @model_validator(mode="after")
    def _fits(self) -> Rvq:
        if self.layers > self.max_layers:
            raise _cross("layers", self.layers, f"is more than rvq.max_layers = {self.max_layers} (the codebooks fitted)")
        if self.codebook_size > self.kmeans.max_samples:  # k-means needs at least one frame per centroid
            raise _cross("codebook_size", self.codebook_size, f"is more than rvq.kmeans.max_samples = {self.kmeans.max_samples} frames to fit it on")
        return self


# ----------------------------------------------------------------------------------- captioner
class Model(Section):
    pretrained: ModelName
    tokenizer: ModelName
    vocab_size: PositiveInt
    d_model: PositiveInt
    encoder_layers: PositiveInt
    decoder_layers: PositiveInt
    attention_heads: PositiveInt
    ffn_dim: PositiveInt
    dropout: Fraction
    use_clap: bool
    max_frames: PositiveInt  # positions (frames, or time steps in the time layout); + 2 <= a pretrained BART's positions: preflight
    token_layout: Literal["flat", "time"]  # time needs tokens with a frequency axis: checked by preflight
    frequency_embedding: Literal["tables", "projection"]

    @model_validator(mode="after")
    def _from_scratch(self) -> Model:
        if self.pretrained is None:  # the sizes apply only to a BART built from scratch
            if self.d_model % self.attention_heads:
                raise _cross("d_model", self.d_model, f"is not a multiple of model.attention_heads = {self.attention_heads}")
            if self.tokenizer is None and self.vocab_size < MIN_TRAINED_VOCAB:
                raise _cross("vocab_size", self.vocab_size, f"is below {MIN_TRAINED_VOCAB}, the smallest byte-level BPE vocabulary")
        return self


class Train(Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    micro_batch_size: Count  # rows per forward/backward pass (gradient accumulation); 0: the whole batch
    lr: float = Field(ge=0.0)  # 0 keeps the weights as loaded (a check that a fine-tune starts from its model)
    warmup_steps: Count
    weight_decay: float = Field(ge=0.0)
    label_smoothing: Fraction
    grad_clip: float = Field(gt=0.0)  # clip_grad_norm_ to 0 would zero every gradient
    mcm_weight: float = Field(ge=0.0)
    mcm_prob: float = Field(ge=0.0, le=1.0)
    mcm_span: PositiveInt
    device: Device
    bf16: bool
    num_threads: Count  # 0: all cores (per process)
    num_processes: PositiveInt  # >1: data-parallel training under accelerate launch, same global batch_size
    resume: bool
    checkpoint_every: Count  # 0: only at each epoch end
    log_every: PositiveInt | None = None  # optional: steps between logged training losses
    timescale: PositiveInt | None  # inverse-sqrt decay timescale; None: transformers' default, the warm-up
    select_by: Literal["spider", "cider_d", "loss"]  # the epoch data/model holds
    keep_best: Count  # also keep the N best epochs (data/model/epochs/)

    @model_validator(mode="after")
    def _processes_fit(self) -> Train:
        if self.num_processes > 1 and self.batch_size < self.num_processes:
            raise _cross("num_processes", self.num_processes, f"is more than train.batch_size = {self.batch_size}: some processes would never get a row")
        if self.num_processes > 1 and ":" in self.device:
            raise _cross("device", self.device, "names one GPU, but train.num_processes > 1 runs one process per GPU: use auto or cuda")
        return self


class Generate(Section):
    num_beams: PositiveInt
    # the decoder start token, the forced <s>, one word and the forced </s>
    max_length: int = Field(ge=4)
    no_repeat_ngram_size: Count
    batch_size: PositiveInt
    # reranking (the score stage only; validation keeps plain beam search): clapart_core/captioner/rerank.py
    rerank: Literal["none", "clap", "hybrid"]
    candidates: PositiveInt  # candidate captions per clip
    sampling: Literal["beam", "nucleus"]
    temperature: float = Field(gt=0.0)
    top_p: float = Field(gt=0.0, le=1.0)
    rerank_weight: float = Field(ge=0.0, le=1.0)  # hybrid: w * log-likelihood + (1 - w) * CLAP cosine

    @model_validator(mode="after")
    def _candidates(self) -> Generate:
        if self.rerank != "none" and self.candidates < 2:
            raise _cross("candidates", self.candidates, f"must be at least 2 to rerank (generate.rerank = {self.rerank})")
        return self


class FinetunePhase(Section):
    """``finetune.NAME``: overrides of ``data`` and ``train``; the merged params are validated whole."""

    data: dict[str, Any]
    train: dict[str, Any]


class CodebookCorpus(Section):
    """``codebook_corpus``: the corpus the codebooks are fitted on (null source: the training split).

    Shaped like a ``finetune`` entry's ``data``: ``source`` and ``root``, plus any other ``data``
    key to override; the overlaid ``data`` is validated whole by :func:`validate_params`.
    """

    model_config = ConfigDict(extra="allow", strict=True)
    source: Literal[DATA_SOURCES] | None
    root: Annotated[str, Field(min_length=1)] | None

    @model_validator(mode="after")
    def _root_given(self) -> CodebookCorpus:
        if self.source is not None and self.root is None:
            raise _cross("root", None, f"must name the corpus folder when codebook_corpus.source = {self.source!r}")
        bad = sorted(set(self.model_extra or {}) - set(Data.model_fields))
        if bad:
            raise _cross(bad[0], (self.model_extra or {})[bad[0]], f"is not a data key (codebook_corpus overrides data: {', '.join(Data.model_fields)})")
        return self


class Params(Section):
    """The whole of ``params.yaml``."""

    seed: Seed
    data: Data
    decode: Decode
    encoder: Encoder
    beats: Beats
    beats_tokenizer: EncoderSettings
    encodec: Encodec
    hubert: Hubert
    speechtokenizer: SpeechTokenizer
    clap: Clap
    extract: Extract
    rvq: Rvq
    codebook_corpus: CodebookCorpus
    model: Model
    train: Train
    finetune: dict[str, FinetunePhase]
    generate: Generate

    @field_validator("finetune")
    @classmethod
    def _phase_names(cls, phases: dict[str, FinetunePhase]) -> dict[str, FinetunePhase]:
        for name in phases:
            if not _PHASE_NAME.fullmatch(name):
                raise _cross(name, name, "is not a usable phase name: use letters, digits, '_' and '-' (it names stages and folders)")
        return phases


# ------------------------------------------------------------------------------------ messages
def _keys_at(loc: tuple[str, ...]) -> list[str] | None:
    """The valid keys of the mapping at ``loc`` (None for a free-form mapping)."""
    model: Any = Params
    for name in loc:
        field = model.model_fields.get(name) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else None


def _all_keys(model: type[BaseModel] = Params, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, field in model.model_fields.items():
        out.append((*prefix, name))
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _all_keys(field.annotation, (*prefix, name))
    return out


def _suggest(loc: tuple[str, ...]) -> str | None:
    """The valid key an unknown one most likely meant: a close name beside it, else the same or a
    close name elsewhere (``+layers=8`` at the top level meant ``rvq.layers``)."""
    siblings = _keys_at(loc[:-1]) or []
    close = difflib.get_close_matches(loc[-1], siblings, n=1, cutoff=0.6)
    if close:
        return ".".join((*loc[:-1], close[0]))
    keys = _all_keys()
    same = [k for k in keys if k[-1] == loc[-1]]
    if same:
        return ".".join(same[0])
    close = difflib.get_close_matches(".".join(loc), [".".join(k) for k in keys], n=1, cutoff=0.75)
    return close[0] if close else None


def _show(value: Any) -> str:
    """A value as YAML spells it (null, true) where Python's repr differs."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _describe(error: dict[str, Any], prefix: tuple[str, ...]) -> str:
    """One pydantic error -> ``<key> <problem>``, the key written as a dotted path."""
    loc = tuple(str(part) for part in error["loc"])
    kind, value, msg = error["type"], error.get("input"), error["msg"]
    if kind == "cross_key":
        loc, value, msg = (*loc, error["ctx"]["key"]), error["ctx"]["value"], error["ctx"]["message"]
    key = ".".join(prefix + loc)
    if kind == "missing":
        hint = " (`train: {}` keeps the first phase's recipe)" if loc[0] == "finetune" and loc[-1] in FINETUNE_SECTIONS else ""
        return f"missing key {key}{hint}"
    if kind == "extra_forbidden" and loc[0] == "finetune" and len(loc) == 3:
        return (
            f"finetune.{loc[1]} may hold only {' and '.join(FINETUNE_SECTIONS)}, not {loc[2]} "
            "(the encoder, codebooks and captioner are those of the model being fine-tuned)"
        )
    if kind == "extra_forbidden":
        near = _suggest(loc)
        return f"unknown key {key}" + (f"; did you mean {'.'.join(prefix) + '.' if prefix else ''}{near}?" if near else "")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{key} should be a mapping of keys, not {_show(value)}"
    msg = re.sub(r"^(Input |Value error, )", "", msg)
    msg = msg[:1].lower() + msg[1:]
    if value is None and kind != "cross_key":
        return f"{key} is null (or empty) but {msg}"
    if kind in ("int_type", "float_type") and isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
        msg += f" (YAML reads {value} as text: write {float(value)!r})"
    return f"{key} = {_show(value)} {msg}"


def _message(err: ValidationError, where: str, prefix: tuple[str, ...] = ()) -> str:
    problems = [_describe(e, prefix) for e in err.errors()]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"{where}: " + "; ".join(problems[:3]) + more


def validate_params(params: Any, where: str = "params.yaml") -> Params:
    """Check ``params`` (the parsed file) against the schema, every ``finetune`` phase overlaid too.

    Returns:
        the validated :class:`Params` (the stages keep reading the plain dict; this is the check).

    Raises:
        ParamsError: one line, ``{where}: <key> <problem>`` for up to three problems, e.g.
            ``params.yaml: rvq.layers = 17 is more than rvq.max_layers = 16 (the codebooks fitted)``.
    """
    if not isinstance(params, dict):
        raise ParamsError(f"{where} should hold a mapping of sections, not {_show(params)}")
    try:
        checked = Params.model_validate(params)
    except ValidationError as err:
        raise ParamsError(_message(err, where)) from None
    if params["codebook_corpus"]["source"] is not None:
        try:
            Data.model_validate(merge_params(params["data"], params["codebook_corpus"]))
        except ValidationError as err:
            raise ParamsError(_message(err, where, ("codebook_corpus",))) from None
    for phase, entry in params["finetune"].items():
        try:
            merged = merge_params(params, entry)
        except ValueError as err:
            raise ParamsError(f"{where}: finetune.{phase}: {err}") from None
        try:
            Params.model_validate(merged)
        except ValidationError as err:
            raise ParamsError(_message(err, where, ("finetune", phase))) from None
    return checked
