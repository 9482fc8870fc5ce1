"""EnCLAP checkpoints (jaeyeonkim99/EnCLAP) as clapart captioners.

EnCLAP's ``EnClapBartForConditionalGeneration`` and [`ClapArtForCaptioning`] compute the same
function; this module converts one into the other and lays EnCLAP's inputs out as clapart's.

What is the same: the encoder sequence (CLAP slot without position, ``<s>`` at BART position 0,
frame t at position t, ``</s>``), frames as the sum of one embedding per codebook, the BART body,
label-smoothed caption loss, the MCM loss ``mcm_loss_scale * sum_i 2^-(i+1) CE_i`` with each
``CE_i`` the mean over codebook i's masked entries, and beam search on BART's decoder.

What differs, and how the conversion keeps outputs equal:

* **Code tables.** EnCLAP's ``embed_encodec.i`` has ``ceil((K + 1) / 64) * 64`` rows: codes
  ``0 … K-1``, the pad row ``K`` (``padding_idx``, zero) and unused rounding rows. clapart's
  ``code_embeddings.i`` has ``K + 2``: codes, pad ``K`` and a separate mask row ``K + 1``.
  Rows ``0 … K`` are copied; the rounding rows are dropped.
* **The mask row.** The original EnCLAP masks MCM codes with the pad id ``K``, so a masked code
  reads the (zero, frozen) pad row. The conversion copies EnCLAP's pad row into clapart's mask
  row, so clapart's masking reads exactly the vector EnCLAP's does and every output matches.
  The one behavioural difference is in further training: clapart learns its mask row, so
  fine-tuning an imported model moves it away from zero (as EnCLAP's later revisions, which use a
  separate learned mask id ``K + 1``, do; checkpoints of those revisions are not recognised here).
* **CLAP normalisation.** clapart L2-normalises the CLAP embedding inside the model, EnCLAP does
  not (its extraction writes unit-norm vectors). Imported models set
  ``ClapArtConfig.normalize_clap=False``, so the projection sees the embedding exactly as given.
* **Input layout.** EnCLAP's encoder input is ``[B, L, R]`` ids with ``<s>`` rows, codes and
  ``</s>`` in one tensor plus ``encodec_mask``; clapart's is codes ``[B, T, N]`` + a frame mask.
  [`inputs_from_enclap`] converts the first into the second.
* **Crop.** EnCLAP keeps the first ``max_position_embeddings - 3`` frames of a clip
  (``preprocess_eval``, ``inference.py``); imported models get that ``max_frames``.

Shapes: B batch, L EnCLAP encoder length (``T + 3``), R = N codebooks, T frames, K codebook size,
E CLAP dim, D d_model, V caption vocabulary.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import BartConfig

from .captioner import IGNORE_INDEX, ClapArtConfig, ClapArtForCaptioning
from .checkpoints import CheckpointError, load_weights_only

logger = logging.getLogger(__name__)

#: the fields ``EnClapBartConfig`` adds to ``BartConfig``
ENCLAP_CONFIG_KEYS = (
    "d_clap",
    "num_rvq",
    "encodec_vocab_size",
    "encodec_pad_token_id",
    "mcm_loss_scale",
    "label_smoothing",
)
#: config.json entries that describe the file, not the model
_METADATA_KEYS = frozenset(
    {"architectures", "transformers_version", "model_type", "_name_or_path", "torch_dtype", "dtype", "id2label", "label2id"}
)
#: EnCLAP's MCM span sampling (``encodec_masking_prob`` / ``encodec_masking_span`` in its cfg/*.yaml);
#: training settings, so not in the checkpoint
ENCLAP_MCM_PROB = 0.15
ENCLAP_MCM_SPAN = 10
#: EnCLAP's caption tokenizer (``facebook/bart-large``'s, used by its inference.py, is the same vocabulary)
ENCLAP_TOKENIZER = "facebook/bart-base"
#: the EnCodec EnCLAP encodes with (at 12 kbps: 16 codebooks)
ENCLAP_ENCODEC = "facebook/encodec_24khz"
#: transformers' port of LAION-CLAP with feature fusion; EnCLAP used LAION-CLAP's
#: 630k-audioset-fusion-best.pt through the laion_clap package
ENCLAP_CLAP = "laion/clap-htsat-fused"

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_MAX_LISTED = 8


# ---------------------------------------------------------------------------------- config
def read_enclap_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of an EnCLAP checkpoint directory, checked to be an ``EnClapBartConfig``."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not an EnCLAP checkpoint directory: it has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err})") from None
    lacking = [key for key in ENCLAP_CONFIG_KEYS if key not in config]
    if lacking:
        raise CheckpointError(
            f"{config_file} is not an EnCLAP config: it lacks {', '.join(lacking)} (EnClapBartConfig's fields)"
        )
    if config.get("model_type", "bart") != "bart":
        raise CheckpointError(f"{config_file} has model_type {config['model_type']!r}; EnCLAP configs are BART's ('bart')")
    return config


def clapart_config_from_enclap(enclap: dict[str, Any], source: str = "EnCLAP config") -> ClapArtConfig:
    """Map an ``EnClapBartConfig`` dict onto a [`ClapArtConfig`].

    ``num_rvq`` -> ``num_codebooks``, ``encodec_vocab_size`` -> ``codebook_size``, ``d_clap`` ->
    ``clap_dim``, ``mcm_loss_scale`` -> ``mcm_weight``, ``label_smoothing`` as is, every BART field
    into ``bart``; ``use_clap=True``, ``normalize_clap=False``, ``max_frames =
    max_position_embeddings - 3`` (EnCLAP's crop) and EnCLAP's MCM span settings (0.15, 10).

    Raises:
        CheckpointError: the config uses something clapart's model does not compute the same way
            (a pad id other than K, scaled embeddings).
    """
    codebook_size = int(enclap["encodec_vocab_size"])
    pad_id = int(enclap["encodec_pad_token_id"])
    if pad_id != codebook_size:
        raise CheckpointError(
            f"{source} has encodec_pad_token_id={pad_id} but encodec_vocab_size={codebook_size}; "
            "clapart's code tables put the pad row right after the codes, so only pad id == vocabulary size converts"
        )
    if enclap.get("scale_embedding"):
        raise CheckpointError(
            f"{source} has scale_embedding=true, which EnCLAP applies to the decoder but not to its encoder's <s>/</s> "
            "rows while clapart scales both; only unscaled (BART-base/large) EnCLAP models convert"
        )
    aliases = set(BartConfig.attribute_map)  # e.g. num_hidden_layers, a copy of encoder_layers
    bart_fields = {
        key: value
        for key, value in enclap.items()
        if key not in ENCLAP_CONFIG_KEYS and key not in _METADATA_KEYS and key not in aliases
    }
    bart = BartConfig(**bart_fields)
    return ClapArtConfig(
        bart=bart,
        num_codebooks=int(enclap["num_rvq"]),
        codebook_size=codebook_size,
        clap_dim=int(enclap["d_clap"]),
        use_clap=True,
        normalize_clap=False,
        max_frames=int(bart.max_position_embeddings) - 3,
        mcm_prob=ENCLAP_MCM_PROB,
        mcm_span=ENCLAP_MCM_SPAN,
        mcm_weight=float(enclap["mcm_loss_scale"]),
        label_smoothing=float(enclap["label_smoothing"]),
    )


# ---------------------------------------------------------------------------------- weights
def _load_file(path: Path) -> dict[str, torch.Tensor]:
    """One weights file: safetensors, or a pickle read with ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"EnCLAP weights {path} are not a readable safetensors file ({err})") from None
    state = load_weights_only(path, "EnCLAP weights")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"EnCLAP weights {path} hold no state dict (a mapping of names to tensors)")
    return state


def enclap_weight_files(path: str | Path) -> list[Path]:
    """The weight files of an EnCLAP checkpoint directory.

    ``model.safetensors`` or ``pytorch_model.bin`` (preferred in that order), or the shards a
    ``*.index.json`` next to them lists, as ``save_pretrained`` writes large models.
    """
    root = Path(path)
    for name in _WEIGHT_FILES:
        index = root / f"{name}.index.json"
        if (root / name).is_file():
            return [root / name]
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                files = [root / shard for shard in sorted(set(weight_map.values()))]
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise CheckpointError(f"{index} is not a shard index ({err.__class__.__name__})") from None
            absent = [file.name for file in files if not file.is_file()]
            if absent:
                raise CheckpointError(f"EnCLAP checkpoint {root} lacks the shards {', '.join(absent)} that {index.name} lists")
            return files
    raise CheckpointError(
        f"EnCLAP checkpoint {root} holds no weights: expected {' or '.join(_WEIGHT_FILES)} (or its .index.json) next to config.json"
    )


def read_enclap_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """EnCLAP's state dict (EnCLAP's names), from the files of [`enclap_weight_files`]."""
    state: dict[str, torch.Tensor] = {}
    for file in enclap_weight_files(path):
        state.update(_load_file(file))
    return state


def _to_clapart_key(key: str, num_codebooks: int) -> str | None:
    """clapart's name for an EnCLAP state-dict entry, or None if clapart has no such entry."""
    match = re.fullmatch(r"model\.encoder\.embed_encodec\.(\d+)\.weight", key)
    if match:
        return f"code_embeddings.{match.group(1)}.weight" if int(match.group(1)) < num_codebooks else None
    if key.startswith("model.encoder.clap_projection."):
        return "clap_projection." + key.removeprefix("model.encoder.clap_projection.")
    if key.startswith("mcm_heads."):
        return key
    if key.startswith(("model.encoder.", "model.decoder.", "model.shared.")) or key in ("lm_head.weight", "final_logits_bias"):
        return "bart." + key
    return None


def _to_enclap_key(key: str) -> str:
    """EnCLAP's name for a clapart state-dict entry (for messages)."""
    match = re.fullmatch(r"code_embeddings\.(\d+)\.weight", key)
    if match:
        return f"model.encoder.embed_encodec.{match.group(1)}.weight"
    if key.startswith("clap_projection."):
        return "model.encoder." + key
    return key.removeprefix("bart.")


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def convert_enclap_state_dict(
    state: dict[str, torch.Tensor], model: ClapArtForCaptioning, source: str = "EnCLAP checkpoint"
) -> dict[str, torch.Tensor]:
    """EnCLAP's state dict under clapart's names and shapes, complete for ``model``.

    Code tables ``[ceil((K+1)/64)*64, D]`` become ``[K + 2, D]``: rows ``0 … K`` (codes and pad)
    and EnCLAP's pad row again as clapart's mask row (see the module docstring). Weights that
    clapart ties (BART's shared embedding, encoder/decoder token embeddings, LM head) may appear
    once or several times; copies must be equal.

    Raises:
        CheckpointError: one sentence naming the missing and unexpected entries (EnCLAP's names),
            the entries whose shapes differ from the config's, or tied copies that differ.
    """
    config = model.config
    k = config.codebook_size
    target = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    wrong: dict[str, str] = {}  # clapart name -> "EnCLAP name [shape] (expected ...)"
    for key, tensor in state.items():
        name = _to_clapart_key(key, config.num_codebooks)
        if name is None or name not in target:
            unexpected.append(key)
            continue
        expected = list(target[name].shape)
        if name.startswith("code_embeddings."):
            if tensor.ndim != 2 or tensor.shape[0] <= k or tensor.shape[1] != expected[1]:
                wrong[name] = f"{key} {list(tensor.shape)} (expected [more than {k}, {expected[1]}])"
                continue
            tensor = torch.cat([tensor[: k + 1], tensor[k : k + 1]])  # codes, pad, mask := pad
        elif list(tensor.shape) != expected:
            wrong[name] = f"{key} {list(tensor.shape)} (expected {expected})"
            continue
        converted[name], origin[name] = tensor, key

    # Fill tied copies (one storage in clapart's model) from whichever the checkpoint holds.
    groups: dict[int, list[str]] = defaultdict(list)
    for name, tensor in target.items():
        groups[tensor.data_ptr()].append(name)
    for names in (group for group in groups.values() if len(group) > 1):
        present = [name for name in names if name in converted]
        if not present:
            continue
        first = converted[present[0]]
        differing = [origin[n] for n in present[1:] if not torch.equal(converted[n], first)]
        if differing:
            raise CheckpointError(
                f"{source} holds different values for {origin[present[0]]} and {', '.join(differing)}, "
                "which BART (and clapart) tie to one tensor"
            )
        for name in names:
            converted.setdefault(name, first)

    missing = [_to_enclap_key(name) for name in target if name not in converted and name not in wrong]
    parts = [
        f"{what} {_listed(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", list(wrong.values())))
        if keys
    ]
    if parts:
        raise CheckpointError(f"{source} does not match its config.json: {'; '.join(parts)}")
    return converted


def load_enclap(path: str | Path) -> ClapArtForCaptioning:
    """Load an EnCLAP checkpoint directory as a [`ClapArtForCaptioning`] in eval mode (CPU, float32).

    The directory holds ``config.json`` (an ``EnClapBartConfig``) and ``pytorch_model.bin`` (read
    with ``torch.load(weights_only=True)``) or ``model.safetensors``, as EnCLAP's
    ``save_pretrained`` and its published checkpoints lay them out. Feed the model clapart's inputs
    (codes ``[B, T, N]``, frame mask, CLAP embedding ``[B, E]``); [`inputs_from_enclap`] converts
    EnCLAP's layout. Outputs equal EnCLAP's to float32 rounding (tests/test_enclap.py).

    Raises:
        CheckpointError: not an EnCLAP checkpoint, or its weights do not fit its config (one
            sentence naming the entries).
    """
    path = Path(path)
    enclap = read_enclap_config(path)
    config = clapart_config_from_enclap(enclap, source=str(path / "config.json"))
    files = enclap_weight_files(path)
    state = read_enclap_state_dict(path)
    model = ClapArtForCaptioning(config)
    converted = convert_enclap_state_dict(state, model, source=f"EnCLAP checkpoint {path}")
    model.load_state_dict(converted, strict=True)
    model.eval()
    logger.info("loaded EnCLAP checkpoint %s (%s)", path, ", ".join(f.name for f in files))
    return model


# ---------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ClapArtInputs:
    """clapart's model inputs for a batch given in EnCLAP's layout.

    Attributes:
        codes: ``[B, T, N]`` long; true codes in ``[0, K)`` (MCM-masked ones restored from the
            labels), ``K + 1`` (the mask id) where EnCLAP's input holds the pad id ``K`` inside a
            clip without an MCM label, 0 at padded frames.
        frame_mask: ``[B, T]`` bool, True = valid frame.
        clap: ``[B, E]`` float32, as given.
        mcm_mask: ``[B, T, N]`` bool, True where EnCLAP has an MCM label; None without labels.
    """

    codes: torch.Tensor
    frame_mask: torch.Tensor
    clap: torch.Tensor
    mcm_mask: torch.Tensor | None = None


def inputs_from_enclap(
    input_ids: Any,
    attention_mask: Any,
    clap_embedding: Any,
    config: ClapArtConfig,
    *,
    encodec_mask: Any | None = None,
    mcm_labels: Any | None = None,
) -> ClapArtInputs:
    """Convert a batch in EnCLAP's layout (``preprocess_train``/``_eval`` + its collator) to clapart's.

    EnCLAP clip with t frames: ``input_ids[b, :t + 3]`` = ``<s>`` row (the CLAP slot), ``<s>`` row,
    t code rows, ``</s>`` row; ``attention_mask`` 1 there and 0 on the right padding;
    ``encodec_mask`` 1 on the code rows (and on padding). MCM-masked codes hold the pad id K and
    ``mcm_labels`` the true code there (-100 elsewhere). ``model(inputs.codes, inputs.frame_mask,
    inputs.clap, labels=..., mcm_mask=inputs.mcm_mask)`` then computes what EnCLAP's ``forward``
    does; clapart's encoder states and logits have EnCLAP's length L = T + 3, row for row.

    Args:
        input_ids: ``[B, L, N]`` ids.
        attention_mask: ``[B, L]``, right-padded.
        clap_embedding: ``[B, E]``.
        config: the model's config (K, N and BART's ``<s>``/``</s>`` ids).
        encodec_mask: ``[B, L]``, checked against the layout if given.
        mcm_labels: ``[B, L, N]`` MCM targets, -100 where not masked.

    Raises:
        ValueError: the batch is not in EnCLAP's layout, or holds something clapart's inputs cannot
            express (another token than ``<s>``/``</s>`` in their rows, labels at unmasked codes).
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.ndim != 3 or ids.shape[-1] != config.num_codebooks:
        raise ValueError(f"input_ids must be [B, L, {config.num_codebooks}], got {list(ids.shape)}")
    batch, seq_len, _ = ids.shape
    valid_rows = torch.as_tensor(attention_mask).bool()
    position = torch.arange(seq_len)
    lengths = valid_rows.sum(dim=1) - 3  # frames per clip
    if not torch.equal(valid_rows, position[None, :] < (lengths + 3)[:, None]):
        raise ValueError("attention_mask must mark a prefix of each row (EnCLAP's collator pads on the right)")
    if bool((lengths < 0).any()):
        raise ValueError("every clip needs its CLAP, <s> and </s> rows (attention_mask sums to at least 3)")
    rows = torch.arange(batch)
    bos, eos = config.bart.bos_token_id, config.bart.eos_token_id
    if not bool((ids[:, 1, 0] == bos).all()) or not bool((ids[rows, lengths + 2, 0] == eos).all()):
        raise ValueError(f"row 1 of every clip must hold <s> ({bos}) and row t + 2 </s> ({eos}), as in EnCLAP's preprocessing")
    if encodec_mask is not None:
        expected = (position[None, :] >= 2) & (position[None, :] < (lengths + 2)[:, None])
        if not torch.equal(torch.as_tensor(encodec_mask).bool() & valid_rows, expected):
            raise ValueError("encodec_mask must be 1 on exactly the code rows 2 … t + 1 of each clip")

    frames = int(lengths.max()) if batch else 0
    frame_mask = torch.arange(frames)[None, :] < lengths[:, None]  # [B, T]
    valid = frame_mask[:, :, None].expand(-1, -1, config.num_codebooks)  # [B, T, N]
    codes = ids[:, 2 : 2 + frames].clone()
    k = config.codebook_size
    if bool(((codes < 0) | (codes > k))[valid].any()):
        raise ValueError(f"codes must lie in [0, {k}] (K = {k} is EnCLAP's pad/mask id)")

    mcm_mask = None
    if mcm_labels is not None:
        labels = torch.as_tensor(mcm_labels, dtype=torch.long)
        if labels.shape != ids.shape:
            raise ValueError(f"mcm_labels must have input_ids' shape {list(ids.shape)}, got {list(labels.shape)}")
        frame_labels = labels[:, 2 : 2 + frames]
        mcm_mask = (frame_labels != IGNORE_INDEX) & valid
        if int((labels != IGNORE_INDEX).sum()) != int(mcm_mask.sum()):
            raise ValueError("mcm_labels may only be set on the code rows 2 … t + 1 (clapart's MCM heads read frames)")
        if bool((codes[mcm_mask] != k).any()):
            raise ValueError(f"mcm_labels mark codes that are not masked with the pad id {k}; clapart masks every labelled code")
        if bool(((frame_labels[mcm_mask] < 0) | (frame_labels[mcm_mask] >= k)).any()):
            raise ValueError(f"mcm_labels must lie in [0, {k}) or be {IGNORE_INDEX}")
        codes = torch.where(mcm_mask, frame_labels, codes)
    # A pad id inside a clip that no label explains: EnCLAP reads its pad row there, which is
    # clapart's mask row in an imported model.
    codes = torch.where(valid & (codes == k), config.mask_code_id, codes)
    codes = codes.masked_fill(~valid, 0)
    clap = torch.as_tensor(clap_embedding, dtype=torch.float32)
    return ClapArtInputs(codes=codes, frame_mask=frame_mask, clap=clap, mcm_mask=mcm_mask)


# ---------------------------------------------------------------------------------- model directory
def _load_tokenizer(name_or_path: str, vocab_size: int) -> Any:
    from .clap import ModelNotFoundError
    from .text import load_caption_tokenizer

    try:
        tokenizer = load_caption_tokenizer(name_or_path)
    except FileNotFoundError as err:
        if Path(name_or_path).exists():
            raise ModelNotFoundError(
                f"caption tokenizer directory {name_or_path} holds no loadable tokenizer (tokenizer.json, or BART's vocab.json and merges.txt)."
            ) from err
        raise ModelNotFoundError(
            f"caption tokenizer {name_or_path!r} is not available here (offline or not a tokenizer directory): "
            f"on a machine with internet run `hf download {name_or_path}`, or pass --tokenizer DIR holding its tokenizer.json."
        ) from err
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"caption tokenizer {name_or_path!r} has {len(tokenizer)} tokens but the checkpoint's vocabulary has {vocab_size}; "
            f"use the tokenizer the checkpoint was trained with ({ENCLAP_TOKENIZER} for EnCLAP's)"
        )
    return tokenizer


def _encodec_frontend(spec: str | dict[str, Any], config: ClapArtConfig) -> dict[str, Any]:
    """frontend.json's ``encoder`` entry for the EnCodec that makes this checkpoint's codes."""
    from .codecs import encodec_from_spec
    from .storage import model_fingerprint

    encoder = encodec_from_spec({"checkpoint": spec} if isinstance(spec, str) else spec)
    name = spec if isinstance(spec, str) else "a random EnCodec"
    if encoder.codebook_size != config.codebook_size:
        raise ValueError(
            f"EnCodec model {name!r} has codebooks of {encoder.codebook_size} codes but the checkpoint's have "
            f"{config.codebook_size} (EnCodec's sizes are powers of two; EnCLAP's are 1024)"
        )
    bandwidths = [float(b) for b in encoder.model.config.target_bandwidths]
    counts = {b: encoder.num_codebooks(b) for b in bandwidths}
    chosen = [b for b, n in counts.items() if n == config.num_codebooks]
    if not chosen:
        raise ValueError(
            f"EnCodec model {name!r} gives {', '.join(f'{n} codebooks at {b:g} kbps' for b, n in counts.items())}, "
            f"none the checkpoint's {config.num_codebooks}"
        )
    return {
        "name": "encodec",
        "spec": {**encoder.spec, "bandwidth": chosen[0]},
        "pretrained": encoder.pretrained,
        "weights_sha256": model_fingerprint(encoder.model),
    }


def _clap_frontend(spec: str | dict[str, Any], config: ClapArtConfig) -> dict[str, Any]:
    """frontend.json's ``clap`` entry; ``spec`` is a hub id / directory or ``{"random": overrides, "seed": s}``."""
    from .clap import load_clap, random_clap
    from .storage import model_fingerprint

    if isinstance(spec, str):
        clap, recorded = load_clap(spec), {"checkpoint": spec, "seed": 0}
    else:
        seed = int(spec.get("seed", 0))
        clap, recorded = random_clap(spec.get("random"), seed=seed), {"checkpoint": None, "seed": seed, "random": spec.get("random")}
    if clap.dim != config.clap_dim:
        raise ValueError(f"CLAP model {clap.name!r} gives {clap.dim}-d embeddings but the checkpoint's d_clap is {config.clap_dim}")
    return {"spec": recorded, "pretrained": clap.pretrained, "weights_sha256": model_fingerprint(clap.model)}


def import_enclap(
    source: str | Path,
    out_dir: str | Path,
    *,
    tokenizer: str = ENCLAP_TOKENIZER,
    encodec: str | dict[str, Any] = ENCLAP_ENCODEC,
    clap: str | dict[str, Any] = ENCLAP_CLAP,
    force: bool = False,
) -> dict[str, Any]:
    """Write a clapart model directory from an EnCLAP checkpoint (``clapart import-enclap``).

    The directory is what the train stage writes and ``clapart caption`` / the score stage read:
    ``config.json`` + ``model.safetensors`` (``save_pretrained``), the caption tokenizer,
    ``frontend.json`` (encoder type ``encodec`` at the bandwidth that gives the checkpoint's codebook
    count, 12 kbps for EnCLAP's 16, and the CLAP model, each with its weight fingerprint) and
    ``training_summary.json`` recording ``imported_from``. It is written beside ``out_dir`` and
    renamed into place.

    Args:
        source: the EnCLAP checkpoint directory.
        out_dir: the model directory to write; an existing one is replaced only with ``force``.
        tokenizer: hub id or directory of the caption tokenizer.
        encodec: hub id or directory of the EnCodec model, or a spec ``{"random": cfg, "seed": s}``
            of :func:`clapart_core.codecs.random_encodec` (tests).
        clap: hub id or directory of the CLAP model, or ``{"random": overrides, "seed": s}``.
        force: replace an existing ``out_dir``.

    Returns:
        The summary written to ``training_summary.json``.

    Raises:
        CheckpointError: ``source`` is not a convertible EnCLAP checkpoint.
        ModelNotFoundError: the tokenizer, EnCodec or CLAP model is not available offline.
        ValueError: they do not fit the checkpoint (vocabulary, codebook size/count, CLAP dim).
        FileExistsError: ``out_dir`` exists and ``force`` is false.
    """
    from .inference import FRONTEND_FILE
    from .resume import file_digest

    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} exists; choose another directory or pass --force to replace it")
    model = load_enclap(source)
    config = model.config
    caption_tokenizer = _load_tokenizer(tokenizer, config.bart.vocab_size)
    frontend = {
        "encoder_type": "encodec",
        "encoder": _encodec_frontend(encodec, config),
        "num_codebooks": config.num_codebooks,
        "clap": _clap_frontend(clap, config),
    }
    files = enclap_weight_files(source)
    summary = {
        "imported_from": str(source.resolve()),
        "imported_format": "enclap",
        "imported_weights": {f.name: file_digest(f) for f in files},
        "pretrained": True,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(caption_tokenizer),
        "tokenizer": str(tokenizer),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    model.save_pretrained(str(tmp))
    caption_tokenizer.save_pretrained(str(tmp))
    (tmp / FRONTEND_FILE).write_text(json.dumps(frontend, indent=2, sort_keys=True) + "\n")
    (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)
    logger.info("imported EnCLAP checkpoint %s into %s", source, out_dir)
    return summary


__all__ = [
    "ENCLAP_CLAP",
    "ENCLAP_ENCODEC",
    "ENCLAP_TOKENIZER",
    "ClapArtInputs",
    "clapart_config_from_enclap",
    "convert_enclap_state_dict",
    "enclap_weight_files",
    "import_enclap",
    "inputs_from_enclap",
    "load_enclap",
    "read_enclap_config",
    "read_enclap_state_dict",
]
