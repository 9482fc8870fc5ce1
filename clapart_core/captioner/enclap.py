"""EnCLAP checkpoints (jaeyeonkim99/EnCLAP) as clapart captioners: the checkpoint format.

This module reads and converts; ``enclap_import`` lays EnCLAP's inputs out as clapart's and
writes a clapart model directory (``clapart import-enclap``).

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
  ``enclap_import.inputs_from_enclap`` converts the first into the second.
* **Crop.** EnCLAP keeps the first ``max_position_embeddings - 3`` frames of a clip
  (``preprocess_eval``, ``inference.py``); imported models get that ``max_frames``.

Shapes: B batch, L EnCLAP encoder length (``T + 3``), R = N codebooks, T frames, K codebook size,
E CLAP dim, D d_model, V caption vocabulary.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BartConfig

from clapart_core.pipeline.checkpoints import CheckpointError, load_weights_only

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


def clapart_config_from_enclap(enclap: dict[str, Any], source: str = "EnCLAP config") -> dict[str, Any]:
    """Map an ``EnClapBartConfig`` dict onto [`ClapArtConfig`]'s keyword arguments.

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
    return dict(
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
    state: dict[str, torch.Tensor], model: nn.Module, source: str = "EnCLAP checkpoint"
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


def load_enclap(path: str | Path, model_cls: type[nn.Module]) -> nn.Module:
    """Load an EnCLAP checkpoint directory as a ``model_cls`` (a [`ClapArtForCaptioning`]) in eval mode (CPU, float32).

    Use it as ``ClapArtForCaptioning.from_enclap(path)``: the class is passed in so that this
    module, which the model's classmethod imports, never imports the model (no import circle).

    The directory holds ``config.json`` (an ``EnClapBartConfig``) and ``pytorch_model.bin`` (read
    with ``torch.load(weights_only=True)``) or ``model.safetensors``, as EnCLAP's
    ``save_pretrained`` and its published checkpoints lay them out. Feed the model clapart's inputs
    (codes ``[B, T, N]``, frame mask, CLAP embedding ``[B, E]``); [`clapart_core.captioner.enclap_import.inputs_from_enclap`]
    converts EnCLAP's layout. Outputs equal EnCLAP's to float32 rounding (tests/test_enclap.py).

    Raises:
        CheckpointError: not an EnCLAP checkpoint, or its weights do not fit its config (one
            sentence naming the entries).
    """
    path = Path(path)
    enclap = read_enclap_config(path)
    config = model_cls.config_class(**clapart_config_from_enclap(enclap, source=str(path / "config.json")))
    files = enclap_weight_files(path)
    state = read_enclap_state_dict(path)
    model = model_cls(config)
    converted = convert_enclap_state_dict(state, model, source=f"EnCLAP checkpoint {path}")
    model.load_state_dict(converted, strict=True)
    model.eval()
    logger.info("loaded EnCLAP checkpoint %s (%s)", path, ", ".join(f.name for f in files))
    return model
