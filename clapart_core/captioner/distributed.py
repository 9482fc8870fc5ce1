"""Training on N processes (``train.num_processes``), on Hugging Face ``accelerate`` (EnCLAP's engine).

Semantics (EnCLAP's ``Accelerator(split_batches=True)``): the global batch is ``train.batch_size``
whatever N is. Every rank draws the same shuffle, crops and MCM masks from the shared seeded
generators, so every rank builds the *whole* global batch (cheap: padding and stacking on the
CPU) and then runs forward/backward on its own contiguous share of the rows (:meth:`Dist.rows`).
The losses are normalised by the global batch's counts (caption tokens, masked entries per
codebook), which each rank knows without communication because it holds the whole batch; the
gradients are then *summed* over the ranks (:meth:`Dist.sum_gradients`), so they equal the
1-process gradient up to float rounding. What differs from 1 process: dropout (each rank draws
its own masks from its own stream, :func:`rank_seed`) and the order of float additions.

Why not torch's ``DistributedDataParallel`` wrapper (what ``Accelerator.prepare`` returns): its
gradients are *means* over the ranks (the whole-batch normalisation wants sums), the MCM heads of
codebooks that one rank's share does not mask are unused there (DDP would need
``find_unused_parameters``), and the wrapper hides the model's own methods. One flat all-reduce
after the backward pass is what DDP does, minus its overlap of communication with the backward
pass (a few ms per step for bart-base on NVLink; nothing on this CPU's gloo).

Launching: :func:`launch_command` builds the ``accelerate launch`` line (also for several
machines); :func:`relaunch` is what the train stage calls when ``num_processes > 1`` and it was
not started by a launcher: it runs itself again under ``accelerate launch`` and waits, so DVC
sees one blocking command. With 1 process nothing here runs: the loop is today's, bitwise.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clapart_core.pipeline.errors import ParamsError

#: set by ``torchrun`` / ``accelerate launch`` in every process it starts
WORLD_ENV = "WORLD_SIZE"


def launched() -> bool:
    """True inside a process started by ``accelerate launch`` / ``torchrun`` (one of several)."""
    return int(os.environ.get(WORLD_ENV, "1")) > 1


def is_main_process() -> bool:
    """False in the processes of rank > 0 of a launched job (``RANK``, set by the launcher)."""
    return int(os.environ.get("RANK", "0")) == 0


def rank_seed(seed: int, rank: int) -> int:
    """The global-RNG (dropout) seed of ``rank``; rank 0 keeps ``seed``, as a single process does."""
    return seed if rank == 0 else seed + 7919 * rank


@dataclass(frozen=True)
class Dist:
    """The processes of one training run: ``rank`` of ``world``; ``Dist()`` is the single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes dvclive, checkpoints, epoch snapshots and ``data/model``."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows: sizes differ by at most 1, the first ranks
        take the extra ones (``numpy.array_split``'s rule); a share may be empty (``n < world``)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """Every ``world``-th item from the ``rank``-th (round robin: whole batches to each rank)."""
        return list(items[self.rank :: self.world])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (a new tensor; the input itself with 1 process)."""
        if self.world == 1:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor, reduction="sum")

    def sum_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its sum over the ranks: one all-reduce of one flat buffer.

        A parameter no rank gave a gradient (an MCM head whose codebook the global batch does not
        mask) keeps ``grad = None``, as with 1 process, so AdamW skips it there too; one that only
        some ranks used gets the others' zeros added. Parameters must share one dtype (float32:
        bf16 autocast keeps the weights in float32).
        """
        if self.world == 1:
            return
        present = [p.grad is not None for p in parameters]
        ref = parameters[0]
        flat = torch.cat(
            [torch.tensor(present, dtype=ref.dtype, device=ref.device)]
            + [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in parameters]
        )
        flat = self.sum(flat)
        used, offset = flat[: len(parameters)], len(parameters)
        for k, p in enumerate(parameters):
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p) if used[k] > 0 else None
            offset += n

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def close(self) -> None:
        """Leave the process group (the end of a run; nothing to do for 1 process)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init(num_processes: int, *, cpu: bool) -> Dist:
    """The run's :class:`Dist`: the single process, or (inside a launched job) accelerate's process group.

    ``cpu``: the gloo backend on CPU processes (else NCCL on one GPU per process).

    Raises:
        ParamsError: the job was launched with another number of processes than ``train.num_processes``.
    """
    world = int(os.environ.get(WORLD_ENV, "1"))
    if world != num_processes:
        raise ParamsError(
            f"params.yaml: train.num_processes={num_processes} but this job was launched with {world} processes "
            f"({WORLD_ENV}={world}); set train.num_processes to {world}"
        )
    if world == 1:
        return Dist()
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    return Dist(rank=state.process_index, world=state.num_processes, local_rank=state.local_process_index)


def free_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of a one-machine job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(
    module_args: Sequence[str],
    *,
    num_processes: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    main_process_ip: str | None = None,
    main_process_port: int = 29500,
    cpu: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """``(argv, extra environment)`` of ``accelerate launch`` running ``python -m <module_args>``.

    ``num_processes`` is the total over all machines (accelerate's meaning): ``num_machines``
    machines run ``num_processes / num_machines`` processes each, and each machine runs this same
    command with its own ``machine_rank`` (0 on the machine at ``main_process_ip``). ``cpu``:
    gloo on CPU processes (``ACCELERATE_USE_CPU=true``), else one GPU per process.

    Raises:
        ParamsError: a count that does not split evenly, or a machine rank out of range.
    """
    if num_processes < 1 or num_machines < 1 or num_processes % num_machines:
        raise ParamsError(f"{num_processes} processes do not split evenly over {num_machines} machine(s)")
    if not 0 <= machine_rank < num_machines:
        raise ParamsError(f"machine rank {machine_rank} is not in 0..{num_machines - 1}")
    if num_machines > 1 and not main_process_ip:
        raise ParamsError("several machines need the address of machine 0 (--main-ip)")
    argv = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", str(num_machines)]
    if num_machines > 1:
        argv += ["--machine_rank", str(machine_rank), "--main_process_ip", str(main_process_ip)]
    argv += ["--main_process_port", str(main_process_port), "--mixed_precision", "no", "--dynamo_backend", "no", "-m", *module_args]
    return argv, ({"ACCELERATE_USE_CPU": "true"} if cpu else {})


def format_command(argv: Sequence[str], env: dict[str, str]) -> str:
    """A shell line: ``VAR=value … argv…``."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv])


def relaunch(module: str, args: Sequence[str], num_processes: int, *, cpu: bool) -> int:
    """Run ``python -m module args`` again on ``num_processes`` processes of this machine and wait.

    The launcher is this interpreter's accelerate (``python -m accelerate.commands.launch``, so the
    venv's), on a free port (several jobs may share a machine). Returns the job's exit status.

    Raises:
        ParamsError: more GPU processes than this machine has GPUs (NCCL runs one per GPU).
    """
    gpus = 0 if cpu else torch.cuda.device_count()
    if not cpu and num_processes > gpus:
        raise ParamsError(
            f"params.yaml: train.num_processes={num_processes} but this machine has {gpus} GPU(s), one per process; "
            "lower it, or launch on several machines (README: Several GPUs or machines)"
        )
    argv, env = launch_command([module, *args], num_processes=num_processes, main_process_port=free_port(), cpu=cpu)
    argv = [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]]
    return subprocess.run(argv, env={**os.environ, **env}, check=False).returncode


def slurm_script(module_args: Sequence[str], *, nodes: int, gpus_per_node: int, main_process_port: int = 29500) -> str:
    """A SLURM batch script running ``python -m <module_args>`` on ``nodes`` x ``gpus_per_node`` GPUs.

    One task per node runs ``accelerate launch`` for its GPUs; machine 0 is the job's first host.
    A DVC stage uses it as ``cmd: sbatch --wait FILE`` (``--wait``: the command blocks until the
    job ends and returns its status, so DVC sees one blocking command). The project folder must be
    on a file system every node shares (rank 0 writes the outputs there).
    """
    argv, _ = launch_command(
        module_args, num_processes=nodes * gpus_per_node, num_machines=nodes,
        machine_rank=0, main_process_ip="MAIN_IP", main_process_port=main_process_port,
    )
    line = " ".join(shlex.quote(a) for a in argv)
    if nodes > 1:  # expanded per task on its node (SLURM_NODEID) and by the batch shell (MAIN_IP)
        line = line.replace("--machine_rank 0", "--machine_rank $SLURM_NODEID").replace("--main_process_ip MAIN_IP", "--main_process_ip $MAIN_IP")
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"# train.num_processes must be {nodes * gpus_per_node} in params.yaml",
        "set -euo pipefail",
        'MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MAIN_IP",
        f"srun bash -c '{line}'",
        "",
    ])
