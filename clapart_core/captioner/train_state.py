"""Resumable training: the checkpoint the train stage writes, what it must match, and how it loads.

A checkpoint (``last.pt``) is everything the training loop needs to continue as if it had never
stopped: model, AdamW and LR-schedule state, the position (epoch, batch within the epoch,
optimiser step), the state of every RNG the loop draws from (torch's global generator for
dropout, the shuffle / crop / MCM generators, CUDA's when used), the selection state (every
epoch's validation loss and scores, and which epochs are kept) and the loss window being
averaged for the next dvclive point. The weights of the kept epochs are not in it: they are
:class:`EpochSnapshots` folders beside it (``epochs/epoch_K/``), each written atomically before
the checkpoint that lists it, and removed only after a checkpoint no longer does. Resuming from it therefore gives
bitwise the same final weights and logged metrics as the uninterrupted run (same machine, same
thread count; ``tests/test_train_resume.py`` kills a run with SIGKILL and checks it).

Safety: the file holds only tensors, dicts, lists, strings and numbers, so it is read with
``torch.load(weights_only=True)``; a file that would need anything else (a pickle that runs
code) is refused with :class:`~clapart_core.pipeline.checkpoints.CheckpointError` before anything in it runs.

Fingerprint: a checkpoint records hashes of what it was trained on (params except those that
do not change the trajectory, seed, train/val data, caption tokenizer, training code, torch
version, device, threads). It is resumed only when all match; otherwise training starts fresh
and says which parts differ. ``train.epochs`` is deliberately not part of it: a finished run
can be extended by raising ``epochs`` (the schedule does not depend on the total).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.pipeline.atomic import atomic_dir, atomic_path, partial_path
from clapart_core.pipeline.checkpoints import CheckpointError, load_weights_only

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
#: bumped when the checkpoint layout changes; another format is treated like another fingerprint
FORMAT_VERSION = 2  # 2: selection state + epoch snapshots instead of one in-checkpoint best_state
#: train keys that change neither the trajectory nor what is logged up to the checkpoint
#: num_processes: the global batch is the same on any number (EnCLAP's split_batches), so a checkpoint
#: of N processes resumes on M (each rank's dropout stream is in it, see training._restore_rank_rng)
TRAJECTORY_FREE_KEYS = frozenset({"resume", "epochs", "checkpoint_every", "num_processes"})
#: modules whose code defines the trajectory: an edit there invalidates a checkpoint
_CODE_MODULES = ("training.py", "data.py", "model.py", "text.py", "train_state.py", "generate.py")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def examples_digest(examples: Sequence[Any]) -> str:
    """Hash of caption examples (clip ids, codes ``[T, N]`` with dtype and shape, CLAP, captions)."""
    h = hashlib.sha256()
    for ex in examples:
        codes = np.ascontiguousarray(ex.codes)
        h.update(json.dumps([ex.clip_id, str(codes.dtype), list(codes.shape), list(ex.captions)]).encode())
        h.update(codes.tobytes())
        if ex.clap is not None:
            h.update(np.ascontiguousarray(ex.clap, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def tokenizer_digest(tokenizer: Any) -> str:
    """Hash of a caption tokenizer's full definition (vocabulary, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return _sha(text.encode())


def fingerprint(
    *,
    model_params: dict[str, Any],
    train_params: dict[str, Any],
    seed: int,
    train: Sequence[Any],
    val: Sequence[Any],
    tokenizer: Any,
    device: torch.device,
    threads: int,
    selection: dict[str, Any] | None = None,
) -> dict[str, str]:
    """What a run's trajectory and its epoch selection depend on, as ``{component: short hash or value}``.

    ``selection``: how epochs are scored beyond the params (the metric actually used, e.g.
    ``cider_d`` where ``spider`` was asked for but SPICE cannot run, and the beam-search
    settings). Components are kept apart so that a mismatch can be reported by name.
    """
    params = {"model": model_params, "train": {k: v for k, v in train_params.items() if k not in TRAJECTORY_FREE_KEYS}}
    code_dir = Path(__file__).resolve().parent
    return {
        "format": str(FORMAT_VERSION),
        "params": _sha(json.dumps(params, sort_keys=True, default=str).encode()),
        "selection": _sha(json.dumps(selection or {}, sort_keys=True, default=str).encode()),
        "seed": str(seed),
        "train_data": examples_digest(train),
        "val_data": examples_digest(val),
        "tokenizer": tokenizer_digest(tokenizer),
        "code": _sha(b"".join((code_dir / name).read_bytes() for name in _CODE_MODULES)),
        "torch": str(torch.__version__),  # a str subclass would not load with weights_only
        "device": str(device),
        "threads": str(threads),
    }


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` through ``<name>.partial`` (fsync, rename; see :mod:`clapart_core.pipeline.atomic`).

    A kill at any moment leaves either the previous complete checkpoint or the new one.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def remove_stale_temps(path: Path) -> None:
    """Delete the temp file a killed run left beside ``path`` (it is never read)."""
    stale = partial_path(path)
    if stale.exists():
        log.info("removing %s, left by an interrupted checkpoint write", stale)
        stale.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: one line naming the file, when it is not a loadable checkpoint or
            would need to construct arbitrary objects (its code is never run).
    """
    state = load_weights_only(path, "training checkpoint", advice="delete it to train from scratch")
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), dict):
        raise CheckpointError(
            f"training checkpoint {path} is not a clapart training checkpoint (no fingerprint); "
            "delete it to train from scratch"
        )
    return state


def fingerprint_mismatch(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """Names of the fingerprint components that differ (empty: the checkpoint may be resumed)."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def capture_rng(generators: dict[str, torch.Generator], device: torch.device) -> dict[str, Any]:
    """States of torch's global RNG (CPU, and CUDA on a CUDA device) and of ``generators``."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in generators.items()}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator], device: torch.device) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    for key, gen in generators.items():
        gen.set_state(state[key])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def truncate_live_metrics(live_dir: Path, step: int) -> None:
    """Drop dvclive history rows logged after ``step`` (by a run killed after its checkpoint).

    dvclive's ``resume=True`` appends to the ``plots/metrics/**.tsv`` histories; rows the
    killed run logged after its last checkpoint will be logged again, so they go first.
    """
    for tsv in sorted((Path(live_dir) / "plots" / "metrics").rglob("*.tsv")):
        with open(tsv, encoding="utf-8", newline="") as f:
            lines = f.readlines()
        if not lines or "step" not in lines[0].rstrip("\r\n").split("\t"):
            continue
        col = lines[0].rstrip("\r\n").split("\t").index("step")
        kept = lines[:1] + [line for line in lines[1:] if int(line.rstrip("\r\n").split("\t")[col]) <= step]
        if len(kept) != len(lines):
            with open(tsv, "w", encoding="utf-8", newline="") as f:
                f.writelines(kept)


def cpu_state_dict(module_or_state: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (so later optimiser steps cannot change it)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}



class EpochSnapshots:
    """The weights of the epochs selection keeps: one ``save_pretrained`` folder per epoch.

    ``{root}/epoch_{K}/`` (``config.json``, ``model.safetensors``) for 1-based epoch ``K``. Kept on
    disk rather than in memory or in ``last.pt``: at the paper's size (bart-base) an epoch's
    weights are ~0.6 GB and ``train.keep_best: 5`` would otherwise multiply the checkpoint.
    Crash safety: a snapshot is written (atomically) before the checkpoint that lists it and
    pruned only after one that no longer does, so every checkpoint's kept epochs are on disk.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, epoch: int) -> Path:
        return self.root / f"epoch_{epoch}"

    def save(self, model: Any, epoch: int) -> None:
        """Write ``model``'s weights as epoch ``epoch`` (replacing a snapshot a killed run left)."""
        with atomic_dir(self.path(epoch)) as tmp:
            model.save_pretrained(str(tmp))

    def missing(self, epochs: Sequence[int]) -> list[int]:
        """The epochs of ``epochs`` that have no complete snapshot."""
        return [e for e in epochs if not (self.path(e) / "model.safetensors").is_file()]

    def prune(self, keep: Sequence[int]) -> None:
        """Remove every snapshot (and leftover temp folder) but those of ``keep``."""
        if not self.root.is_dir():
            return
        wanted = {self.path(e).name for e in keep}
        for entry in sorted(self.root.iterdir()):
            if entry.name not in wanted:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
