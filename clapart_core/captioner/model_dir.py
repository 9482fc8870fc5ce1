"""The trained-model folder (``data/model``): the one module that writes and reads it.

Layout (HF ``save_pretrained`` plus what captioning raw audio needs)::

    config.json, model.safetensors      the captioner (ClapArtForCaptioning)
    tokenizer.json, tokenizer_config.json   its caption tokenizer
    training_summary.json               what train_captioner reports (losses, steps, pretrained, …)
    frontend.json                       the token front end: which encoder / CLAP weights, as a
                                        checkpoint path or a random-init spec + seed, with their
                                        weight fingerprints
    rvq.npz                             the codebooks the tokens were made with (BEATs + RVQ only)
    epochs/epoch_K/                     the ``train.keep_best`` best epochs (K 1-based), each a
                                        complete model folder of the same layout (no summary);
                                        absent with ``keep_best: 0``

The top-level folder is the epoch ``train.select_by`` chose (``training_summary.json`` says which:
``best_epoch``; ``kept_epochs`` lists the folders under ``epochs/`` best first), so
:func:`load_captioner` on ``data/model`` loads the selected model and on
``data/model/epochs/epoch_K`` another kept one.

:func:`save_captioner` writes the first three parts (and ``epochs/``) as one folder swap (a
killed run leaves the previous folder or none); the train stage then adds the front end with
:func:`write_frontend`. Weights are read from safetensors only, so loading never unpickles code.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from clapart_core.captioner.model import ClapArtForCaptioning
from clapart_core.captioner.text import load_caption_tokenizer
from clapart_core.pipeline.atomic import atomic_dir, write_text
from clapart_core.pipeline.storage import RaggedReader
from clapart_core.tokens.rvq import load_codebooks, save_codebooks

SUMMARY_FILE = "training_summary.json"
EPOCHS_DIR = "epochs"
FRONTEND_FILE = "frontend.json"
CODEBOOKS_FILE = "rvq.npz"
#: files a model folder must hold for :func:`load_captioner`
REQUIRED_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def _json_text(data: dict[str, Any]) -> str:
    # sorted keys and a final newline: the same content always gives the same bytes for DVC
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def save_captioner(
    model: ClapArtForCaptioning,
    tokenizer: PreTrainedTokenizerBase,
    summary: dict[str, Any],
    out_dir: Path,
    frontend: dict[str, Any] | None = None,
    kept_epochs: Mapping[int, Path] | None = None,
) -> None:
    """Replace ``out_dir`` with model + tokenizer + ``training_summary.json`` (+ ``frontend.json``
    when given, as an import writes it; training records it with :func:`write_frontend`), all at once.

    ``kept_epochs``: epoch -> a folder ``save_pretrained`` wrote (training's epoch snapshots),
    copied to ``epochs/epoch_K/`` with the tokenizer.
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / SUMMARY_FILE).write_text(_json_text(summary))
        if frontend is not None:
            (tmp / FRONTEND_FILE).write_text(_json_text(frontend))
        for epoch, snapshot in sorted((kept_epochs or {}).items()):
            dst = tmp / EPOCHS_DIR / f"epoch_{epoch}"
            shutil.copytree(snapshot, dst)
            tokenizer.save_pretrained(str(dst))


def load_snapshot(folder: Path) -> ClapArtForCaptioning:
    """The captioner weights a ``save_pretrained`` folder holds (an epoch snapshot), eval mode, CPU."""
    model = ClapArtForCaptioning.from_pretrained(str(folder))
    model.eval()
    return model


def kept_epoch_dirs(model_dir: Path) -> dict[int, Path]:
    """``{epoch: folder}`` of the kept epochs under ``model_dir/epochs/`` (empty when none were kept)."""
    root = Path(model_dir) / EPOCHS_DIR
    if not root.is_dir():
        return {}
    found = {}
    for folder in root.iterdir():
        prefix, _, number = folder.name.partition("_")
        if folder.is_dir() and prefix == "epoch" and number.isdigit():
            found[int(number)] = folder
    return dict(sorted(found.items()))


def load_captioner(model_dir: Path) -> tuple[ClapArtForCaptioning, PreTrainedTokenizerBase]:
    """Load a captioner and its tokenizer saved by :func:`save_captioner` (eval mode, CPU).

    Raises:
        FileNotFoundError: ``model_dir`` lacks one of :data:`REQUIRED_MODEL_FILES`.
    """
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} is not a trained captioner directory (missing {', '.join(missing)}); run the train stage first."
        )
    model = ClapArtForCaptioning.from_pretrained(str(model_dir))
    model.eval()
    tokenizer = load_caption_tokenizer(model_dir)
    return model, tokenizer


def read_summary(model_dir: Path) -> dict[str, Any]:
    """``training_summary.json`` as written by training (see ``train_captioner``'s return value)."""
    path = Path(model_dir) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {model_dir} was not written by the clapart train stage")
    return json.loads(path.read_text())


def write_frontend(model_dir: Path, tokens_meta: dict[str, Any], codebooks_file: Path, clap_file: Path | None) -> None:
    """Record the token front end next to a trained captioner (``frontend.json``, ``rvq.npz``), and
    next to each kept epoch under ``epochs/`` (so each is a model folder ``clapart caption`` can use).

    Args:
        model_dir: the trained model directory.
        tokens_meta: metadata of the token files the model was trained on.
        codebooks_file: the full ``rvq.npz``; its first ``num_codebooks`` layers are copied.
        clap_file: a CLAP embeddings file (its attrs name the CLAP model), or None without CLAP.
    """
    n = int(tokens_meta["num_codebooks"])
    folders = [Path(model_dir), *kept_epoch_dirs(model_dir).values()]
    if "codebooks_file" in tokens_meta:  # codes from the RVQ codebooks (encoders/registry.py token_metadata says which)
        codebooks, fit = load_codebooks(codebooks_file)
        for folder in folders:
            save_codebooks(folder / CODEBOOKS_FILE, codebooks[:n], **fit)
    clap = None
    if clap_file is not None:
        with RaggedReader(clap_file) as r:
            clap = {"spec": json.loads(r.attrs["spec"]), "pretrained": bool(r.attrs["pretrained"]), "weights_sha256": r.attrs["weights_sha256"]}
    frontend = {"encoder_type": tokens_meta["encoder_type"], "encoder": tokens_meta["encoder"], "num_codebooks": n, "clap": clap}
    for folder in folders:
        write_text(folder / FRONTEND_FILE, _json_text(frontend))


def read_frontend(model_dir: Path) -> dict[str, Any]:
    """``frontend.json``: ``encoder_type``, ``encoder`` (spec, pretrained, weights_sha256), ``num_codebooks``, ``clap`` (or None)."""
    path = Path(model_dir) / FRONTEND_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {model_dir} was not written by the clapart train stage")
    return json.loads(path.read_text())
