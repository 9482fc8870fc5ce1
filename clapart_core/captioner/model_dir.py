"""The trained-model folder (``data/model``): the one module that writes and reads it.

Layout (HF ``save_pretrained`` plus what captioning raw audio needs)::

    config.json, model.safetensors      the captioner (ClapArtForCaptioning)
    tokenizer.json, tokenizer_config.json   its caption tokenizer
    training_summary.json               what train_captioner reports (losses, steps, pretrained, …)
    frontend.json                       the token front end: which encoder / CLAP weights, as a
                                        checkpoint path or a random-init spec + seed, with their
                                        weight fingerprints
    rvq.npz                             the codebooks the tokens were made with (BEATs + RVQ only)
    frontend/{encoder,clap}/NAME        copies of the encoder / CLAP weights when they were local
                                        files (a BEATs .pt, a model folder); hub ids are recorded as ids
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

A model directory is data, not instructions: it may come from anyone.
:func:`clapart_core.captioner.frontend.load_frontend` accepts only the fields below, of the right types; every checkpoint it names is a relative path
that stays inside the directory (symlinks resolved; each kept epoch holds its own copies), or — for models loaded by hub id (CLAP,
EnCodec) — a Hugging Face id, read from the local cache only. Random-model sizes are checked
before anything is allocated (:func:`clapart_core.encoders.spec.check_random_size`) and the
captioner's config against its weights file (:func:`load_captioner`).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from transformers import PreTrainedTokenizerBase

from clapart_core.captioner.model import ClapArtConfig, ClapArtForCaptioning
from clapart_core.captioner.text import load_caption_tokenizer
from clapart_core.pipeline.atomic import atomic_dir, atomic_path, partial_path, write_text
from clapart_core.pipeline.errors import UserError
from clapart_core.pipeline.storage import RaggedReader
from clapart_core.tokens.rvq import load_codebooks, save_codebooks

SUMMARY_FILE = "training_summary.json"
EPOCHS_DIR = "epochs"
FRONTEND_FILE = "frontend.json"
CODEBOOKS_FILE = "rvq.npz"
#: files a model folder must hold for :func:`load_captioner`
REQUIRED_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
#: the folder of a model directory holding copies of local encoder / CLAP weights
FRONTEND_WEIGHTS_DIR = "frontend"
#: frontend.json is a few hundred bytes; anything far larger is not one
_MAX_FRONTEND_BYTES = 1 << 20


class ModelDirError(UserError, ValueError):
    """A model directory that cannot be used as it is; the message is one sentence naming the file and the problem."""


def _json_text(data: dict[str, Any]) -> str:
    # sorted keys and a final newline: the same content always gives the same bytes for DVC
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def bundled_checkpoint(value: str | None, role: str) -> tuple[str | None, Path | None]:
    """What ``frontend.json`` records for a checkpoint named by params or an option, and the local
    file or folder to copy into the model directory for it.

    A local file or folder (e.g. ``/data/BEATs_iter3_plus_AS2M.pt``) becomes
    ``frontend/{role}/{its name}``, copied there, so the directory is self-contained and names no
    path outside itself; a hub id and None are recorded as they are (nothing to copy).
    """
    if not value or not Path(value).exists():
        return value, None
    source = Path(value)
    return PurePosixPath(FRONTEND_WEIGHTS_DIR, role, source.resolve().name).as_posix(), source


def _copy_into(model_dir: Path, rel: str, source: Path) -> None:
    """Copy a checkpoint file or folder to ``model_dir/rel`` through a temporary name (symlinks
    followed: the copy holds the bytes, not a link out of the directory)."""
    dest = Path(model_dir) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        tmp = partial_path(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, symlinks=False)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    else:
        with atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)


def save_captioner(
    model: ClapArtForCaptioning,
    tokenizer: PreTrainedTokenizerBase,
    summary: dict[str, Any],
    out_dir: Path,
    frontend: dict[str, Any] | None = None,
    frontend_files: Mapping[str, Path] | None = None,
    kept_epochs: Mapping[int, Path] | None = None,
) -> None:
    """Replace ``out_dir`` with model + tokenizer + ``training_summary.json`` (+ ``frontend.json``
    when given, as an import writes it, with ``frontend_files``: relative path -> local checkpoint
    to copy there, see :func:`bundled_checkpoint`; training records the front end with
    :func:`write_frontend`), all at once.

    ``kept_epochs``: epoch -> a folder ``save_pretrained`` wrote (training's epoch snapshots),
    copied to ``epochs/epoch_K/`` with the tokenizer.
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / SUMMARY_FILE).write_text(_json_text(summary))
        for rel, source in (frontend_files or {}).items():
            _copy_into(tmp, rel, source)
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


def read_config(model_dir: Path) -> ClapArtConfig:
    """The captioner's ``config.json`` alone (no weights): ``max_frames``, the decoder's positions, …

    Raises:
        ModelDirError: missing or not a clapart captioner config.
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelDirError(f"{model_dir} is not a trained captioner directory (no config.json); run the train stage first")
    try:
        return ClapArtConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelDirError(f"{path} is not a clapart captioner config ({first})") from None


def max_caption_length(config: ClapArtConfig) -> int:
    """The longest caption, in tokens, the decoder has learned positions for (``--max-length`` above
    it would index past BART's position table)."""
    return int(config.bart.max_position_embeddings)


def _check_weights_fit_config(model_dir: Path, config: ClapArtConfig) -> None:
    """Refuse a ``config.json`` whose sizes do not describe ``model.safetensors`` before building the
    model: the config's parameter count (on the meta device, nothing allocated) must equal the
    number of values the weights file holds (its header alone is read)."""
    import torch
    from safetensors import safe_open

    path = Path(model_dir) / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except (OSError, ValueError, RuntimeError) as err:  # safetensors raises SafetensorError (a ValueError/OSError kin)
        raise ModelDirError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    except Exception as err:  # noqa: BLE001 - safetensors' own error type is not importable everywhere
        raise ModelDirError(f"{path} is not a readable safetensors file ({type(err).__name__})") from None
    try:
        with torch.device("meta"):  # shapes only: a config of absurd sizes allocates nothing here
            expected = sum(p.numel() for p in ClapArtForCaptioning(config).parameters())
    except (ValueError, TypeError, RuntimeError) as err:
        raise ModelDirError(f"{Path(model_dir) / 'config.json'} does not describe a model ({str(err).splitlines()[0]})") from None
    if expected > stored:
        raise ModelDirError(
            f"{Path(model_dir) / 'config.json'} describes a model of {expected:,} parameters but {path} holds {stored:,} values; "
            "the config does not belong to these weights"
        )


def load_captioner(model_dir: Path) -> tuple[ClapArtForCaptioning, PreTrainedTokenizerBase]:
    """Load a captioner and its tokenizer saved by :func:`save_captioner` (eval mode, CPU), from the
    directory alone (never the network), after checking its config against its weights file.

    Raises:
        FileNotFoundError: ``model_dir`` lacks one of :data:`REQUIRED_MODEL_FILES`.
        ModelDirError: the config cannot be read or does not fit the weights.
    """
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} is not a trained captioner directory (missing {', '.join(missing)}); run the train stage first."
        )
    _check_weights_fit_config(model_dir, read_config(model_dir))
    model = ClapArtForCaptioning.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    tokenizer = load_caption_tokenizer(model_dir)
    return model, tokenizer


def read_summary(model_dir: Path) -> dict[str, Any]:
    """``training_summary.json`` as written by training (see ``train_captioner``'s return value)."""
    path = Path(model_dir) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {model_dir} was not written by the clapart train stage")
    return json.loads(path.read_text())


def write_frontend(
    model_dir: Path, tokens_meta: dict[str, Any], codebooks_file: Path, clap_file: Path | None, max_seconds: float | None = None
) -> None:
    """Record the token front end next to a trained captioner (``frontend.json``, ``rvq.npz``, and
    copies of local encoder / CLAP weights under ``frontend/``, see :func:`bundled_checkpoint`), and
    next to each kept epoch under ``epochs/`` (so each is a model folder ``clapart caption`` can use).

    Args:
        model_dir: the trained model directory.
        tokens_meta: metadata of the token files the model was trained on.
        codebooks_file: the full ``rvq.npz``; its first ``num_codebooks`` layers are copied.
        clap_file: a CLAP embeddings file (its attrs name the CLAP model), or None without CLAP.
        max_seconds: the decode stage's crop (``decode.max_seconds``): how much of a clip the
            encoders saw in training, which ``clapart caption`` reads of a file (None: no crop).
    """
    model_dir = Path(model_dir)
    n = int(tokens_meta["num_codebooks"])
    folders = [Path(model_dir), *kept_epoch_dirs(model_dir).values()]
    if "codebooks_file" in tokens_meta:  # codes from the RVQ codebooks (encoders/registry.py token_metadata says which)
        codebooks, fit = load_codebooks(codebooks_file)
        for folder in folders:
            save_codebooks(folder / CODEBOOKS_FILE, codebooks[:n], **fit)
    with RaggedReader(clap_file) if clap_file is not None else _no_reader() as r:
        clap_attrs = None if r is None else (json.loads(r.attrs["spec"]), bool(r.attrs["pretrained"]), r.attrs["weights_sha256"])
    for folder in folders:  # each folder is self-contained: it names no file outside itself
        encoder = {**tokens_meta["encoder"], "spec": _bundle_spec(folder, tokens_meta["encoder"]["spec"], "encoder")}
        clap = None
        if clap_attrs is not None:
            spec, pretrained, sha = clap_attrs
            clap = {"spec": _bundle_spec(folder, spec, "clap"), "pretrained": pretrained, "weights_sha256": sha}
        frontend = {
            "encoder_type": tokens_meta["encoder_type"],
            "encoder": encoder,
            "num_codebooks": n,
            "clap": clap,
            "max_seconds": None if max_seconds is None else float(max_seconds),
        }
        write_text(folder / FRONTEND_FILE, _json_text(frontend))


@contextmanager
def _no_reader() -> Iterator[None]:
    yield None


def _bundle_spec(model_dir: Path, spec: dict[str, Any], role: str) -> dict[str, Any]:
    recorded, source = bundled_checkpoint(spec.get("checkpoint"), role)
    if source is not None:
        _copy_into(model_dir, str(recorded), source)
    return {**spec, "checkpoint": recorded} if "checkpoint" in spec else dict(spec)


def read_frontend(model_dir: Path) -> dict[str, Any]:
    """``frontend.json`` as written: ``encoder_type``, ``encoder`` (spec, pretrained, weights_sha256),
    ``num_codebooks``, ``clap`` (or None), ``max_seconds`` (None where not recorded). The score stage
    reads its own model with it; ``clapart caption`` reads a user's directory through
    :func:`clapart_core.captioner.frontend.load_frontend`, which checks every field first.

    Raises:
        FileNotFoundError: there is no ``frontend.json``.
        ModelDirError: it is not a JSON object of at most 1 MiB.
    """
    path = Path(model_dir) / FRONTEND_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {model_dir} was not written by the clapart train stage")
    if path.stat().st_size > _MAX_FRONTEND_BYTES:
        raise ModelDirError(f"{path} is {path.stat().st_size:,} bytes, not a front-end description")
    try:
        front = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelDirError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(front, dict):
        raise ModelDirError(f"{path} must hold a JSON object, got {type(front).__name__}")
    return {**front, "max_seconds": front.get("max_seconds")}
