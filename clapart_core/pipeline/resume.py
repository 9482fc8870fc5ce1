"""Resumable extraction: a long stage keeps every finished group of clips as a shard file in a
work directory, so a run that was killed recomputes only the groups it had not finished.

Why shards and not appending to the half-written output: HDF5 keeps metadata in memory until
the file is closed, so a ``.partial`` killed mid-write may not open at all. A shard is a small
``.npz`` written under a temporary name and renamed (:mod:`clapart_core.pipeline.atomic`), so a
shard that exists is complete.

Work directory layout::

    key.json      what the shards were computed from: input file digest, model fingerprint,
                  settings, and the grouping (clip ids of every group)
    000000.npz    group 0: clip_ids [n] str, offsets [n + 1] int64, data [sum_T, *row_shape]
    000001.npz    ...

A run whose key differs from ``key.json`` (other audio, weights, batch size, device, ...) discards
the directory first, which is what makes resuming by default safe. Every run, fresh or resumed,
writes the final artifact from the groups in order through the same writer, so the artifact's
bytes do not depend on where earlier runs were killed. The work directory is removed only after
the final artifact has been renamed into place; a stage that writes several artifacts keeps them
all (``keep=True``) and removes its work root at the very end (:func:`discard`), so a kill during
the last artifact does not cost the ones finished before it (DVC deletes all of a stage's outputs
before rerunning it).

Groups are made of whole batches, so a resumed run batches every clip exactly as an uninterrupted
one does (batch composition can move float outputs by rounding).

Several processes (:func:`run_sharded`): the groups are also the unit of work of a sharded run.
Rank ``r`` of ``N`` computes the groups ``g`` with ``g % N == r`` into the same work directory,
then the parent writes the artifact from all groups exactly as one process does. Every clip is
batched as in a one-process run, so the artifact is the same file whatever ``N`` is, wherever the
per-batch computation does not depend on the process's thread count or which GPU of a kind it
ran on (tests/test_sharded_extraction.py checks byte identity on the CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clapart_core.pipeline import atomic

log = logging.getLogger(__name__)

FORMAT = 1
#: shard limit in input samples for outputs that grow with the clip length (2^23 samples =
#: 524 s at 16 kHz, ~40 MB of 768-d fp16 BEATs features): bounds the memory one group holds.
SHARD_SAMPLES = 2**23

Batch = Sequence[int]
Items = Iterable[tuple[str, np.ndarray]]


class ShardDone(Exception):
    """Raised by :class:`ShardedRun` in a preparing or worker process (:func:`run_sharded`) once its
    part is done: it writes no artifact, so the ``with`` block that would is skipped."""


@dataclass(frozen=True)
class _Role:
    """What this process does in a sharded run: ``rank`` -1 prepares the work directories (the
    parent, before the workers start); ``0 <= rank < world`` computes that shard of the groups."""

    rank: int
    world: int


_role: _Role | None = None  # None: an ordinary run (compute what is missing, write the artifact)


@contextlib.contextmanager
def _as_role(role: _Role) -> Iterator[None]:
    global _role
    _role = role
    try:
        yield
    finally:
        _role = None


def shard_clips() -> int:
    """Most clips per shard: ``$CLAPART_SHARD_CLIPS`` or 256. Only sets the resume granularity
    (the final artifact is the same for every value), so it is not a pipeline parameter."""
    return int(os.environ.get("CLAPART_SHARD_CLIPS", "256"))


def plan_groups(
    batches: Sequence[Batch], sizes: np.ndarray | None = None, max_clips: int | None = None, max_size: int = SHARD_SAMPLES
) -> list[list[Batch]]:
    """Cut the batches (in run order) into consecutive groups of whole batches.

    A group closes once it holds ``max_clips`` clips (default :func:`shard_clips`) or, with
    ``sizes`` (``[n_clips]`` input samples), ``max_size`` samples. Depends only on its arguments.
    """
    max_clips = max_clips or shard_clips()
    groups: list[list[Batch]] = []
    current: list[Batch] = []
    clips = size = 0
    for batch in batches:
        current.append(batch)
        clips += len(batch)
        size += int(np.sum(sizes[np.asarray(batch, dtype=np.int64)])) if sizes is not None else 0
        if clips >= max_clips or (sizes is not None and size >= max_size):
            groups.append(current)
            current, clips, size = [], 0, 0
    if current:
        groups.append(current)
    return groups


def file_digest(path: Path | str) -> str:
    """SHA-256 of a file's bytes (streamed): identifies the input the shards were computed from."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ShardedRun:
    """Iterate ``(clip_id, array)`` over all groups, reusing finished shards and saving new ones.

    Use as ``with ShardedRun(...) as items, Writer(out) as w: for cid, a in items: w.append(cid, a)``:
    the writer renames its output when its block ends, then this run removes the work directory
    (only when no exception is raised and ``keep`` is false; a failed or killed run keeps it for
    the next one).

    Args:
        work_dir: the shard directory; must lie outside any DVC output directory (DVC deletes
            outputs before rerunning a stage).
        key: JSON-serialisable description of everything the outputs depend on.
        clip_ids: clip ids of the input, indexed by the batches.
        groups: from :func:`plan_groups`; each group a list of batches of clip indices.
        compute: ``compute(group)`` yields ``(clip_id, array [T, *row_shape])`` for the group's
            clips in order, arrays already in the storage dtype (shards store them as given).
        desc: progress bar / log label.
        keep: leave the shards after success; the caller removes them with :func:`discard`.
    """

    def __init__(
        self,
        work_dir: Path | str,
        key: dict[str, Any],
        clip_ids: Sequence[str],
        groups: Sequence[Sequence[Batch]],
        compute: Callable[[Sequence[Batch]], Items],
        desc: str,
        keep: bool = False,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.keep = keep
        self.clip_ids = clip_ids
        self.groups = groups
        self.compute = compute
        self.desc = desc
        self._expected = [[clip_ids[i] for batch in group for i in batch] for group in groups]
        plan = hashlib.sha256("\n\n".join("\n".join(ids) for ids in self._expected).encode()).hexdigest()
        if "device" in key:  # the kind of device, not its index: rank r of a sharded run computes on cuda:r
            key = {**key, "device": str(key["device"]).split(":")[0]}
        self.key = json.dumps({**key, "format": FORMAT, "groups": plan}, sort_keys=True, indent=1, default=str) + "\n"
        self.reused = 0

    def __enter__(self) -> Iterator[tuple[str, np.ndarray]]:
        key_file = self.work_dir / "key.json"
        if _role is not None and _role.rank >= 0:  # a worker: the parent prepared the directory
            if not key_file.is_file() or key_file.read_text() != self.key:
                raise RuntimeError(f"{self.desc}: {key_file} is not the key this worker computes (settings differ between the processes)")
            self._compute_shard(_role.rank, _role.world)
            raise ShardDone
        if self.work_dir.exists() and (not key_file.is_file() or key_file.read_text() != self.key):
            log.info("%s: discarding %s (computed from other inputs or settings)", self.desc, self.work_dir)
            shutil.rmtree(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not key_file.is_file():
            atomic.write_text(key_file, self.key)
        done = [g for g in range(len(self.groups)) if self._shard(g).is_file()]
        if done:
            clips = sum(len(self._expected[g]) for g in done)
            total = sum(len(ids) for ids in self._expected)
            log.info("%s: resuming with %d of %d clips done (%d of %d groups in %s)", self.desc, clips, total, len(done), len(self.groups), self.work_dir)
        if _role is not None:  # preparing: the workers compute, a later ordinary pass writes the artifact
            raise ShardDone
        return self._items()

    def _compute_shard(self, rank: int, world: int) -> None:
        """Compute and save the missing groups ``g`` with ``g % world == rank``."""
        mine = list(range(rank, len(self.groups), world))
        bar = tqdm(total=sum(len(self._expected[g]) for g in mine), desc=f"{self.desc} [{rank + 1}/{world}]", unit="clip", position=rank)
        computed = 0
        for g in mine:
            if self._load(g) is None:
                self._save(g, self._computed(g))
                computed += 1
            bar.update(len(self._expected[g]))
        bar.close()
        log.info("%s: rank %d of %d computed %d of its %d groups (the others were finished)", self.desc, rank, world, computed, len(mine))

    def _computed(self, g: int) -> list[tuple[str, np.ndarray]]:
        items = list(self.compute(self.groups[g]))
        got = [cid for cid, _ in items]
        if got != self._expected[g]:
            raise RuntimeError(f"{self.desc}: group {g} produced clips {got[:3]}..., expected {self._expected[g][:3]}...")
        return items

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None and not self.keep:
            discard(self.work_dir)

    def _shard(self, g: int) -> Path:
        return self.work_dir / f"{g:06d}.npz"

    def _items(self) -> Iterator[tuple[str, np.ndarray]]:
        total = sum(len(ids) for ids in self._expected)
        bar = tqdm(total=total, desc=self.desc, unit="clip")
        for g in range(len(self.groups)):
            items = self._load(g)
            if items is None:
                items = self._computed(g)
                self._save(g, items)
            else:
                self.reused += len(items)
            bar.update(len(items))
            yield from items
        bar.close()
        log.info("%s: reused %d of %d clips from finished shards, computed %d", self.desc, self.reused, total, total - self.reused)

    def _load(self, g: int) -> list[tuple[str, np.ndarray]] | None:
        path = self._shard(g)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                ids, offsets, data = f["clip_ids"].tolist(), f["offsets"], f["data"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("%s: recomputing group %d, %s is unreadable (%s)", self.desc, g, path, err)
            return None
        if ids != self._expected[g]:
            log.warning("%s: recomputing group %d, %s holds other clips", self.desc, g, path)
            return None
        return [(cid, data[offsets[k] : offsets[k + 1]]) for k, cid in enumerate(ids)]

    def _save(self, g: int, items: list[tuple[str, np.ndarray]]) -> None:
        arrays = [np.asarray(a) for _, a in items]
        offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).astype(np.int64)
        data = np.concatenate(arrays)
        ids = np.array([cid for cid, _ in items], dtype=str)
        # an open file, not a name: np.savez appends ".npz" to a name without it (".partial")
        with atomic.atomic_path(self._shard(g)) as tmp, open(tmp, "wb") as f:
            np.savez(f, clip_ids=ids, offsets=offsets, data=data)


def discard(work_dir: Path | str) -> None:
    """Remove a work directory (or a root of several) once every output built from it is in place."""
    if Path(work_dir).exists():
        log.info("removing the finished shards in %s", work_dir)
        shutil.rmtree(work_dir, ignore_errors=True)


#: ``work(device)`` builds what a stage runs (an encoder, ...) on ``device`` and returns one step per
#: artifact: each step writes its artifact through a :class:`ShardedRun` (with ``keep=True``).
Work = Callable[[str], Sequence[Callable[[], Any]]]


def rank_device(device: str, rank: int) -> str:
    """The device of rank ``rank``: ``cuda:{rank % GPUs}`` for a CUDA device (one process per
    visible GPU), the same device otherwise (CPU processes)."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"cuda:{rank % max(1, torch.cuda.device_count())}"


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed stage leaves no orphan
    computing on; its shards stay for the rerun). Elsewhere a no-op."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _worker(work: Work, device: str, rank: int, world: int, threads: int) -> None:
    """One rank of :func:`run_sharded` (runs in a spawned process)."""
    import torch

    _die_with_parent()
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s rank {rank}: %(message)s")
    steps = work(rank_device(device, rank))
    with _as_role(_Role(rank, world)):
        for step in steps:
            with contextlib.suppress(ShardDone):
                step()


def run_sharded(work: Work, num_processes: int, device: str) -> None:
    """Run a stage's extraction steps on ``num_processes`` processes; the artifacts are those of one.

    With one process: ``work(device)``'s steps, in order. With ``N > 1``: this process runs every
    step up to its :class:`ShardedRun`, which discards work directories computed from other inputs
    and writes their keys; then ``N`` spawned processes (each with ``1/N`` of this one's CPU threads,
    and ``cuda:r`` where ``device`` is a CUDA device) each compute their shard of every step's
    groups into the work directories; then this process runs every step again, which finds every
    group computed and writes the artifacts from them in order. A killed run resumes from the
    shards any rank finished, with any process count (the groups do not depend on ``N``).

    ``work`` must be picklable (a module-level function, or a ``functools.partial`` of one).
    """
    steps = work(device)
    if num_processes > 1:
        import torch
        import torch.multiprocessing as mp

        with _as_role(_Role(-1, num_processes)):
            for step in steps:
                with contextlib.suppress(ShardDone):
                    step()
        threads = max(1, torch.get_num_threads() // num_processes)
        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and any CUDA state
        procs = [ctx.Process(target=_worker, args=(work, device, rank, num_processes, threads)) for rank in range(num_processes)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        failed = [rank for rank, proc in enumerate(procs) if proc.exitcode != 0]
        if failed:
            codes = ", ".join(f"rank {r} exit code {procs[r].exitcode}" for r in failed)
            raise RuntimeError(f"{len(failed)} of {num_processes} extraction processes failed ({codes}); rerun to resume from the shards they finished")
    for step in steps:
        step()
