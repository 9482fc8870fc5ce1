"""EnCLAP's inputs and model directories for clapart (``clapart import-enclap``).

[`inputs_from_enclap`] lays EnCLAP's encoder input out as clapart's; [`import_enclap`] writes a
clapart model directory from an EnCLAP checkpoint, which ``clapart caption`` and the score stage
use with the ``encodec`` token type. The checkpoint format itself is :mod:`.enclap`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clapart_core.captioner.enclap import ENCLAP_CLAP, ENCLAP_ENCODEC, ENCLAP_TOKENIZER, enclap_weight_files
from clapart_core.captioner.model import IGNORE_INDEX, ClapArtConfig, ClapArtForCaptioning
from clapart_core.captioner.model_dir import bundled_checkpoint, save_captioner
from clapart_core.captioner.text import load_caption_tokenizer
from clapart_core.encoders.clap import ModelNotFoundError, load_clap, random_clap
from clapart_core.encoders.encodec import load_encodec, random_encodec
from clapart_core.encoders.registry import ENCLAP_TOKEN_TYPE
from clapart_core.encoders.spec import checkpoint_or_random
from clapart_core.pipeline.resume import file_digest
from clapart_core.pipeline.storage import model_fingerprint

logger = logging.getLogger(__name__)


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
    # EnCLAP's codes are EnCodec's by definition: this builds the EnCodec directly (the registry's
    # entry needs a bandwidth, which is what this function works out)
    encoder = checkpoint_or_random({"checkpoint": spec} if isinstance(spec, str) else spec, load_encodec, random_encodec, "EnCodec")
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
    spec = {**encoder.spec, "bandwidth": chosen[0]}
    if spec.get("checkpoint"):  # a local folder is copied into the model directory (bundled_checkpoint)
        spec["checkpoint"] = bundled_checkpoint(spec["checkpoint"], "encoder")[0]
    return {
        "name": ENCLAP_TOKEN_TYPE.encoder_name,
        "spec": spec,
        "pretrained": encoder.pretrained,
        "weights_sha256": model_fingerprint(encoder.model),
    }


def _clap_frontend(spec: str | dict[str, Any], config: ClapArtConfig) -> dict[str, Any]:
    """frontend.json's ``clap`` entry; ``spec`` is a hub id / directory or ``{"random": overrides, "seed": s}``."""
    if isinstance(spec, str):
        clap, recorded = load_clap(spec), {"checkpoint": bundled_checkpoint(spec, "clap")[0], "seed": 0}
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
            of :func:`clapart_core.encoders.encodec.random_encodec` (tests).
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
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} exists; choose another directory or pass --force to replace it")
    model = ClapArtForCaptioning.from_enclap(source)
    config = model.config
    caption_tokenizer = _load_tokenizer(tokenizer, config.bart.vocab_size)
    frontend = {
        "encoder_type": ENCLAP_TOKEN_TYPE.name,
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
    # local EnCodec / CLAP folders travel inside the model directory, which names no path outside itself
    bundled = [bundled_checkpoint(spec, role) for spec, role in ((encodec, "encoder"), (clap, "clap")) if isinstance(spec, str)]
    save_captioner(model, caption_tokenizer, summary, out_dir, frontend=frontend, frontend_files={rel: src for rel, src in bundled if src is not None})
    logger.info("imported EnCLAP checkpoint %s into %s", source, out_dir)
    return summary


