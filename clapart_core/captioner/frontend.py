"""``frontend.json`` read as data, not instructions: what ``clapart caption`` trusts of a model directory.

A model directory may come from anyone, and its ``frontend.json`` says which encoder and CLAP to
build. :func:`load_frontend` accepts only the known fields, of the right types; every checkpoint
it names is a relative path that stays inside the directory (absolute paths, ``..`` and symlinks
leading out are refused), or — for models loaded by hub id (CLAP, EnCodec) — a Hugging Face id,
which is then read from the local cache only (``local_files_only``). An unknown
``encoder_type`` is refused by the token-type registry. Random-model sizes are checked before
anything is allocated (:func:`clapart_core.encoders.spec.check_random_size`, in
:class:`clapart_core.captioner.inference.CaptionPipeline`).

Kept apart from :mod:`clapart_core.captioner.model_dir` because it needs the registry, which the
train and score stages (readers of their own model directory) need not depend on.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from clapart_core.captioner.model_dir import FRONTEND_FILE, ModelDirError, read_frontend
from clapart_core.encoders.registry import TokenType, token_type

# a Hugging Face model id: owner/name (no '..', no third component)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")

_FRONTEND_FIELDS = ("encoder_type", "encoder", "num_codebooks", "clap")
_FRONTEND_OPTIONAL = ("max_seconds",)  # absent in directories written before it was recorded
_ENCODER_FIELDS = ("name", "spec", "pretrained", "weights_sha256")
_CLAP_FIELDS = ("spec", "pretrained", "weights_sha256")
_CLAP_SPEC_FIELDS = frozenset(("checkpoint", "random", "seed"))


def _fields(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] | frozenset[str] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelDirError(f"{where} must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise ModelDirError(f"{where} has unknown field {unknown[0]!r} (known: {', '.join(sorted((*required, *optional)))})")
    missing = [k for k in required if k not in value]
    if missing:
        raise ModelDirError(f"{where} lacks the field {missing[0]!r}")
    return value


def _typed(value: Any, types: type | tuple[type, ...], where: str, what: str) -> Any:
    # bool is an int in Python: a seed or count of `true` is refused
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
        raise ModelDirError(f"{where} must be {what}, got {json.dumps(value)[:80]}")
    return value


def checkpoint_location(model_dir: Path, value: str, where: str, hub: bool) -> str:
    """Where a checkpoint named in ``frontend.json`` is: a path inside ``model_dir`` (usable from the
    current directory), or — ``hub``: for models loaded by id — a Hugging Face id (read from the
    local cache only).

    Raises:
        ModelDirError: an absolute path, a ``..`` component, a path that leads out of the directory
            through a symlink, or a name that is neither in the directory nor (``hub``) a model id.
    """
    rel = PurePosixPath(value)
    if not value.strip() or rel.is_absolute() or PureWindowsPath(value).anchor or ".." in rel.parts or "\\" in value:
        raise ModelDirError(f"{where} = {value!r} must be a path inside the model directory (absolute paths and '..' are refused)")
    local = Path(model_dir) / rel
    if local.exists() or local.is_symlink():
        if not local.resolve().is_relative_to(Path(model_dir).resolve()):
            raise ModelDirError(f"{where} = {value!r} is a link that leads out of the model directory")
        return str(local)
    if hub and _HUB_ID.fullmatch(value):
        return value
    raise ModelDirError(f"{where} = {value!r} is not in the model directory" + (" and is not a Hugging Face model id" if hub else ""))


def _check_spec(model_dir: Path, spec: Any, where: str, allowed: frozenset[str], hub: bool) -> None:
    _fields(spec, where, (), allowed)
    checkpoint = spec.get("checkpoint")
    if checkpoint is not None:
        checkpoint_location(model_dir, _typed(checkpoint, str, f"{where}.checkpoint", "a string or null"), f"{where}.checkpoint", hub)
    elif "seed" not in spec:
        raise ModelDirError(f"{where} names neither a checkpoint nor a random model's seed")
    if "seed" in spec:
        _typed(spec["seed"], int, f"{where}.seed", "an integer")
    if spec.get("random") is not None:
        _typed(spec["random"], dict, f"{where}.random", "an object of model sizes")


def _check_sha(value: Any, where: str) -> None:
    if not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16,64}", value)):
        raise ModelDirError(f"{where} must be a hexadecimal weight fingerprint, got {json.dumps(value)[:80]}")


def validate_frontend(front: Any, model_dir: Path, where: str = FRONTEND_FILE) -> TokenType:
    """Check a parsed ``frontend.json`` (see the module docstring); returns its token type.

    Raises:
        ModelDirError: one sentence naming the field and the problem.
    """
    _fields(front, where, _FRONTEND_FIELDS, _FRONTEND_OPTIONAL)
    try:
        kind = token_type(_typed(front["encoder_type"], str, f"{where}: encoder_type", "a string"))
    except ValueError as err:
        raise ModelDirError(f"{where}: {err}".replace("encoder.type=", "encoder_type=")) from None
    encoder = _fields(front["encoder"], f"{where}: encoder", _ENCODER_FIELDS)
    if encoder["name"] != kind.encoder_name:
        raise ModelDirError(f"{where}: encoder.name {encoder['name']!r} does not match encoder_type {kind.name!r} (expected {kind.encoder_name!r})")
    _check_spec(model_dir, encoder["spec"], f"{where}: encoder.spec", kind.spec_fields, hub=kind.checkpoint == "hub")
    _typed(encoder["pretrained"], bool, f"{where}: encoder.pretrained", "true or false")
    _check_sha(encoder["weights_sha256"], f"{where}: encoder.weights_sha256")
    n = _typed(front["num_codebooks"], int, f"{where}: num_codebooks", "an integer")
    if n < 1:
        raise ModelDirError(f"{where}: num_codebooks must be at least 1, got {n}")
    if front["clap"] is not None:
        clap = _fields(front["clap"], f"{where}: clap", _CLAP_FIELDS)
        _check_spec(model_dir, clap["spec"], f"{where}: clap.spec", _CLAP_SPEC_FIELDS, hub=True)
        _typed(clap["pretrained"], bool, f"{where}: clap.pretrained", "true or false")
        _check_sha(clap["weights_sha256"], f"{where}: clap.weights_sha256")
    seconds = front.get("max_seconds")
    if seconds is not None and not (math.isfinite(_typed(seconds, (int, float), f"{where}: max_seconds", "a number or null")) and seconds > 0):
        raise ModelDirError(f"{where}: max_seconds must be a positive number or null, got {seconds}")
    return kind


def load_frontend(model_dir: Path) -> dict[str, Any]:
    """A model directory's ``frontend.json`` (:func:`clapart_core.captioner.model_dir.read_frontend`),
    every field checked (:func:`validate_frontend`) before anything is built from it.

    Raises:
        FileNotFoundError: there is no ``frontend.json``.
        ModelDirError: it is not valid JSON or not a valid front end (one sentence naming the field).
    """
    path = Path(model_dir) / FRONTEND_FILE
    front = read_frontend(model_dir)
    raw = {k: v for k, v in front.items() if k != "max_seconds" or v is not None}
    validate_frontend(raw, Path(model_dir), str(path))
    return front


def local_spec(model_dir: Path, spec: dict[str, Any], hub: bool) -> dict[str, Any]:
    """A validated spec with its checkpoint resolved (:func:`checkpoint_location`), ready to build."""
    if not spec.get("checkpoint"):
        return spec
    return {**spec, "checkpoint": checkpoint_location(Path(model_dir), spec["checkpoint"], "checkpoint", hub)}
