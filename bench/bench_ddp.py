"""Training steps/s on 1 vs N processes (``train.num_processes``), side by side in one run.

The real loop (:func:`clapart_core.captioner.training.train_captioner`: build_batch, MCM masks,
forward, backward, gradient all-reduce, clip, AdamW) on the demo model and synthetic clips
(16 codebooks, CLAP slot), the same global batch every time:

* 1 process with all the cores' threads (what ``num_processes: 1`` runs), and on a CPU also 1
  process with 1 thread (on a busy machine OpenMP's spin-waiting threads can make the first far
  slower than the core count suggests; the second is the per-process setting of the N-process run),
* N processes under ``accelerate launch`` with cores / N threads each (CPU: gloo; ``--device cuda``:
  one GPU per process, NCCL).

Steps/s is the training loop's own (``seconds_per_step`` of the summary: the loop from its first
step to its last, the first step's optimiser-state allocation included in both); the launch
overhead (python, torch and transformers imported by every process, the rendezvous) is reported
apart, as the launch's wall time minus its loop time.

    python -m bench.bench_ddp [--quick] [--device cuda --processes 4]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import line, set_threads
from clapart_core.captioner import distributed
from clapart_core.captioner.data import CaptionExample
from clapart_core.pipeline.params import load_params

ROOT = Path(__file__).resolve().parent.parent


def _examples(n: int, frames: int, k: int, seed: int = 0) -> list[CaptionExample]:
    """``n`` clips of ``[frames, 16]`` random codes with a CLAP vector and one caption each."""
    rng = np.random.default_rng(seed)
    words = ["a dog barks", "rain falls on a roof", "a bell rings twice", "a siren wails far away"]
    return [
        CaptionExample(f"c{i}", rng.integers(0, k, (frames, 16)).astype(np.int16), rng.standard_normal(512).astype(np.float32), (words[i % 4],))
        for i in range(n)
    ]


def job(device: str, batch: int, frames: int, steps: int, threads: int, processes: int) -> dict:
    """The run's settings: the demo model (params.yaml) and its training params, 1 epoch of ``steps`` steps."""
    params = load_params(ROOT / "params.yaml")
    model = {**params["model"], "codebook_size": params["rvq"]["codebook_size"], "max_frames": max(frames, 8)}
    train = {
        **params["train"], "epochs": 1, "batch_size": batch, "device": device, "num_threads": threads, "num_processes": processes,
        "select_by": "loss", "keep_best": 0, "resume": False, "checkpoint_every": 0,
    }
    return {"model": model, "train": train, "clips": batch * steps, "frames": frames}


def train_job(spec: dict, out: Path) -> dict:
    """Train ``spec`` (this process, or one rank of a launched job); rank 0's summary is ``out/training_summary.json``."""
    from clapart_core.captioner.training import train_captioner

    data = _examples(spec["clips"], spec["frames"], int(spec["model"]["codebook_size"]))
    return train_captioner(data, [], model_params=spec["model"], train_params=spec["train"], out_dir=out, live_dir=None, seed=1115)


def launch_job(spec: dict, out: Path) -> tuple[dict, float]:
    """``spec`` on ``spec["train"]["num_processes"]`` processes under accelerate launch: (rank 0's summary, wall seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    argv, env = distributed.launch_command(
        ["bench.bench_ddp", "--child", str(out)], num_processes=int(spec["train"]["num_processes"]),
        main_process_port=distributed.free_port(), cpu=spec["train"]["device"] == "cpu",
    )
    argv = [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]]
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"the {spec['train']['num_processes']}-process run failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "model" / "training_summary.json").read_text()), wall


def compare(device: str, processes: int, batch: int, frames: int, steps: int, tag: str = "") -> Iterator[str]:
    """Lines: steps/s on 1 process and on ``processes`` (same global batch), and the launch overhead."""
    cores = set_threads() if device == "cpu" else 4
    per_rank = max(cores // processes, 1) if device == "cpu" else cores
    setting = f"global batch {batch} × {frames} frames × 16 codebooks, demo model, {steps} steps, {device}"
    with tempfile.TemporaryDirectory(prefix="clapart-bench-ddp-") as tmp:
        one = train_job(job(device, batch, frames, steps, cores, 1), Path(tmp) / "one" / "model")
        single = train_job(job(device, batch, frames, steps, 1, 1), Path(tmp) / "single" / "model") if device == "cpu" and cores > 1 else None
        set_threads(cores)
        many, wall = launch_job(job(device, batch, frames, steps, per_rank, processes), Path(tmp) / "many")
    base = 1.0 / one["seconds_per_step"]
    rate = 1.0 / many["seconds_per_step"]
    prefix = "train_ddp" if device == "cpu" else "gpu_train_ddp"
    yield line(f"{prefix}_1proc{tag}", base, "steps/s", f"1 process × {cores} threads, {setting}")
    note = f"{rate / base:.2f}x 1 process × {cores} threads"
    if single is not None:
        one_thread = 1.0 / single["seconds_per_step"]
        yield line(f"{prefix}_1proc_1thread{tag}", one_thread, "steps/s", f"{one_thread / base:.2f}x 1 process × {cores} threads, same run")
        note += f", {rate / one_thread:.2f}x 1 process × 1 thread"
    yield line(f"{prefix}_{processes}proc{tag}", rate, "steps/s", f"{note}; {processes} processes × {per_rank} threads, same run")
    overhead = wall - many["seconds_per_step"] * many["steps"]
    yield line(f"{prefix}_{processes}proc_launch{tag}", overhead, "s", f"accelerate launch start-up and rendezvous, {processes} processes, once per stage run")


def main(quick: bool = False) -> Iterator[str]:
    """Full: global batch 16 × 496 frames (10 s clips), 8 steps; quick: 8 × 192, 4 steps. 2 CPU processes."""
    batch, frames, steps = (8, 192, 4) if quick else (16, 496, 8)
    yield from compare("cpu", 2, batch, frames, steps, "_quick" if quick else "")


def _child(folder: Path) -> None:
    spec = json.loads((folder / "spec.json").read_text())
    train_job(spec, folder / "model")


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child(Path(sys.argv[sys.argv.index("--child") + 1]))
    elif "--device" in sys.argv:
        device = sys.argv[sys.argv.index("--device") + 1]
        n = int(sys.argv[sys.argv.index("--processes") + 1]) if "--processes" in sys.argv else 2
        for text in compare(device, n, 16, 496, 8):
            print(text, flush=True)
    else:
        for text in main(quick="--quick" in sys.argv):
            print(text, flush=True)
