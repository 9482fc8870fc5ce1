"""Loading PyTorch checkpoint files without ever running code from them.

A ``.pt`` file is a pickle, and unpickling can call any importable function. Every checkpoint
the project reads (official BEATs files, the training-resume checkpoint) goes through
:func:`load_weights_only`: ``torch.load(weights_only=True)`` accepts only tensors and plain
containers, and a refusal becomes one :class:`CheckpointError` line naming the file and the
callable the pickle would have run.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from clapart_core.pipeline.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint file exists but cannot be used (unsafe, unreadable, or of the wrong format)."""


def load_weights_only(path: str | Path, what: str = "", advice: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors.

    Args:
        path: the checkpoint file.
        what: how the message names the file (e.g. ``"training checkpoint"``); empty: the path alone.
        advice: appended to every message after ``"; "`` (e.g. what the user can do about it).

    Raises:
        CheckpointError: the pickle would construct something other than tensors and plain
            containers (nothing in it has run), or the file is not a readable checkpoint.
    """
    label = f"{what} {path}" if what else str(path)
    tail = f"; {advice}" if advice else ""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only names the first callable the pickle would have invoked ("GLOBAL builtins.open").
        called = re.search(r"GLOBAL (\S+)", str(err))
        if called:
            raise CheckpointError(
                f"{label} was refused by torch.load(weights_only=True): it would call {called.group(1)} while "
                f"loading, and only tensors and plain containers are accepted because a pickle can run code{tail}"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n\n|$)", str(err), re.S)
        detail = reason.group(1) if reason else str(err).splitlines()[0]
        raise CheckpointError(f"{label} is not a readable PyTorch checkpoint ({detail}){tail}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{label} is not a readable PyTorch checkpoint ({type(err).__name__}: {first}){tail}") from None
