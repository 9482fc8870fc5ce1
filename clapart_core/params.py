"""Reading ``params.yaml`` (the one place every stage's settings come from)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_params(path: Path | str = "params.yaml") -> dict[str, Any]:
    """Parse ``params.yaml`` into nested dicts (``yaml.safe_load``: no object construction)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run clapart stages from the project root (the folder with dvc.yaml)")
    with path.open() as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of parameter sections")
    return params


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; anything else is returned as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but no CUDA GPU is visible to torch")
    return name


def start_stage(name: str, path: Path | str = "params.yaml") -> dict[str, Any]:
    """Common start of every ``stages/*.py``: log to stderr with timestamps, return the params."""
    import logging

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(name)s: %(message)s", datefmt="%H:%M:%S")
    return load_params(path)
