"""Full-size rehearsal of the paper recipe (issue 12 item 6): both phases of ``paper-clotho`` at
the paper's sizes on generated corpora, stage by stage, with each stage's cost extrapolated to
the real AudioCaps and Clotho.

It builds a scratch git + DVC copy of the project (``bench.bench_dvc.make_project``) whose
``params.yaml`` is ``profiles/paper-rehearsal.yaml`` (plus any ``--set``), writes the rehearsal
corpora into it (``clapart rehearsal-corpus data/rehearsal``), and runs every stage of
``dvc repro`` in DVC's order as ``dvc repro -s STAGE``, each measured as its own process
(``bench.memory.run_stage``): wall seconds, peak RSS (``wait4``: DVC's or the stage's, whichever is
larger), bytes written (``/proc/PID/io`` of DVC, which includes the stage it waited for; the
scratch DVC cache links instead of copying, so the figure is the stage's own writing) and CPU
seconds. A final ``dvc repro`` must then rerun nothing.

The development machine is shared: other people's jobs stretch a stage's wall time, not its CPU
time. So every time below except the measured wall is an idle-machine estimate: the wall time
scaled by ``CPU / (wall x cores the stage uses)`` (:func:`idle_factor`; two for torch and FAISS,
one for ``corpus``/``decode``), exact for a stage that keeps its cores busy, low for serial
parts (DVC, interpreter start).

Extrapolation to the full corpora, on this machine, stage by stage. Each stage's fixed part
(process start, model build, DVC's hashing: the time outside its progress bars, or for a stage
without bars the time of ``configure``) is counted once; the rest scales:

* ``corpus``, ``decode``, ``features``, ``clap``, ``tokenize``: linear in clips of the phase
  (clip lengths as in the real data: 10 s AudioCaps, 15-30 s Clotho).
* ``codebooks``: linear in the k-means sample (``metrics/rvq.json`` ``sample_size``, against
  ``min(rvq.kmeans.max_samples, training frames)`` = 1,000,000 for AudioCaps): every Lloyd
  iteration of every layer is one ``[M, D] x [D, K]`` assignment GEMM.
* ``train`` / ``finetune``: optimiser steps x the paper's 15 epochs. The step time is the
  train loop's own (its tqdm line at the last step), per full batch (pairs / batch size), so a
  short last batch does not count as a full step; the rest of each epoch (validation loss and
  the epoch checkpoint) is scaled by validation pairs; process start, model build and saving
  are counted once.
* ``score``: linear in test clips x beams (the beam count is the profile's, so the same). The
  rehearsal's barely trained captioner writes ``decode_text.max_length`` tokens per caption; a
  trained one stops after ~10-20, so this is an upper bound.
* ``configure``: constant.

The GPU column uses the figures recorded in ``bench/RESULTS.md`` where there are any: BEATs
extraction (bf16, the profile's batch size, 10 s clips; scaled by audio duration) and the
bart-base-sized training step (bf16, batch 16 x 496 frames; scaled by encoder frames per step).
For the other stages no GPU figure has been measured and the column stays empty.

    python -m bench.rehearsal                                   # full size (~30 min on 2 idle cores)
    python -m bench.rehearsal --audiocaps 4 2 2 --clotho 3 2 2  # reduced, to check the plumbing
    python -m bench.rehearsal --append                          # also append the table to bench/RESULTS.md
    python -m bench.rehearsal --workdir W --keep ... --resume   # continue a killed run in W
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from bench.bench_dvc import _env, _ran, _run, make_project
from bench.memory import Measure, run_stage
from bench.run import describe, load_state
from clapart_core.corpus.rehearsal import DEFAULT_AUDIOCAPS, DEFAULT_CLOTHO

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "profiles" / "paper-rehearsal.yaml"
RESULTS = ROOT / "bench" / "RESULTS.md"
#: the real corpora, clips per split: AudioCaps as the paper trains on it, Clotho v2.1
FULL = {"audiocaps": {"train": 49_838, "val": 495, "test": 975}, "clotho": {"train": 3_839, "val": 1_045, "test": 1_045}}
#: per-clip captions used in training and validation (AudioCaps train: 1)
CAPTIONS = {"audiocaps": {"train": 1, "val": 5, "test": 5}, "clotho": {"train": 5, "val": 5, "test": 5}}
PAPER_EPOCHS = 15
PATCHES_PER_10S = 496  # BEATs patches of a 10 s clip (62 time steps x 8 frequency patches)


@dataclass
class Phase:
    """What one training phase of the rehearsal had: clips and total audio per split."""

    dataset: str  # "audiocaps" or "clotho"
    clips: dict[str, int]
    seconds: dict[str, float]

    @property
    def total(self) -> int:
        return sum(self.clips.values())

    def full_total(self) -> int:
        return sum(FULL[self.dataset].values())

    def full_seconds(self) -> float:
        """Audio in the full corpus, assuming its clips are as long on average as the rehearsal's."""
        return sum(FULL[self.dataset][s] * self.seconds[s] / self.clips[s] for s in self.clips)


@dataclass
class Row:
    """One stage's line of the table. Times other than ``measure.wall`` are idle-machine seconds:
    wall seconds scaled by the stage's ``CPU / (wall x threads)`` (see :func:`idle_factor`)."""

    stage: str
    clips: int
    measure: Measure
    fixed: float  # seconds that do not grow with the corpus (process start, model build, saving)
    full_cpu_s: float | None  # extrapolated seconds on this CPU
    full_gpu_s: float | None  # extrapolated seconds on one GPU, from bench/RESULTS.md
    scaling: str
    idle: float = 1.0  # idle seconds per wall second of this run

    @property
    def per_clip(self) -> float:
        """Seconds per clip, fixed part left out."""
        return (self.measure.wall * self.idle - self.fixed) / self.clips if self.clips else 0.0


#: stages that run on one core (the others run torch / FAISS on both)
SERIAL = ("corpus", "configure", "decode")


def threads(stage: str) -> int:
    """Cores a stage keeps busy on this machine (all of them for torch and FAISS, which use one
    thread per core here: train.num_threads 2, torch's default elsewhere)."""
    import os

    return 1 if _kind(stage) in SERIAL else os.cpu_count() or 1


def idle_factor(stage: str, measure: Measure) -> float:
    """Idle-machine seconds per measured wall second: ``CPU / (wall x threads)``.

    On a shared machine a stage's wall time grows with the others' load while its CPU time
    hardly does (spinning OpenMP threads add some), so the CPU time spread over the cores it
    uses estimates its wall time on an idle machine: exact for a stage that keeps them all busy,
    low for one with serial parts (DVC's hashing, Python's start), by up to the thread count.
    """
    if measure.cpu <= 0 or measure.wall <= 0:
        return 1.0
    return min(measure.cpu / (measure.wall * threads(stage)), 1.0)


#: a finished tqdm bar: ``DESC: 100%|...| n/n [MM:SS<00:00, RATE]`` (elapsed at one-second resolution;
#: RATE ``12.3clip/s`` or ``4.56s/clip``, tqdm's smoothed rate)
_BAR = re.compile(r"[\r\n]([^\r\n]+?): +100%[^\r\n]*?\| *(\d+)/\2 \[(?:(\d+):)?(\d+):(\d+)<[^,\]]*, *([\d.]+)(s/)?")
#: bars that are not the stage's per-clip work
_NOT_WORK = ("Loading weights", "Writing model shards", "train captioner")


def _elapsed(match: re.Match) -> float:
    """A bar's seconds: its elapsed time, or for short bars (under 5 s, where the one-second
    resolution would round a fast loop to 0) its count over its rate."""
    elapsed = int(match.group(3) or 0) * 3600 + int(match.group(4)) * 60 + int(match.group(5))
    if elapsed >= 5:
        return float(elapsed)
    rate, inverse = float(match.group(6)), match.group(7) is not None
    return int(match.group(2)) * rate if inverse else int(match.group(2)) / max(rate, 1e-9)


def split_fixed(log: str, wall: float, floor: float) -> tuple[float, float]:
    """``(fixed, work)`` seconds of a stage: work = its progress bars' elapsed time (the per-clip
    loops; each bar counted once, at its last print); without bars, fixed = ``floor`` (the wall
    time of ``configure``, a stage that starts DVC and Python and does almost nothing)."""
    bars: dict[str, float] = {}
    for match in _BAR.finditer(log):
        desc = match.group(1).strip()
        if not desc.startswith(_NOT_WORK):
            bars[desc] = max(bars.get(desc, 0), _elapsed(match))
    if not bars:
        fixed = min(floor, wall)
        return fixed, wall - fixed
    work = min(float(sum(bars.values())), wall)
    return wall - work, work


def _phase_of(stage: str) -> str | None:
    """``finetune@clotho`` -> ``clotho``; main-phase stages -> None."""
    return stage.split("@", 1)[1] if "@" in stage else None


def _kind(stage: str) -> str:
    """The stage's script: ``ft_decode@clotho`` -> ``decode``, ``finetune@clotho`` -> ``train``."""
    base = stage.split("@", 1)[0].removeprefix("ft_")
    return "train" if base == "finetune" else base


def _phase_data(project: Path, phase: str | None) -> Phase:
    root = project / ("data" if phase is None else f"data/finetune/{phase}")
    table = pq.read_table(root / "corpus/manifest.parquet", columns=["split", "duration_s"])
    source = table.schema.metadata[b"clapart.source"].decode()
    clips: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for split, duration in zip(table.column("split").to_pylist(), table.column("duration_s").to_pylist(), strict=True):
        clips[split] = clips.get(split, 0) + 1
        seconds[split] = seconds.get(split, 0.0) + duration
    return Phase(source, clips, seconds)


def gpu_figures(results: Path = RESULTS) -> dict[str, float]:
    """GPU figures recorded in ``bench/RESULTS.md`` (empty where none was measured).

    Keys: ``beats_clips_per_s_b{N}`` (bf16 autocast, 10 s clips, batch N) and
    ``train_step_s`` with ``train_step_frames`` (bf16 bart-base-sized step, batch x frames).
    """
    text = results.read_text() if results.is_file() else ""
    out: dict[str, float] = {}
    batches = re.search(r"at batch (\d+) / (\d+) / (\d+); bf16 autocast (\d+) / (\d+) / (\d+) clips/s", text)
    if batches:
        for batch, rate in zip(batches.groups()[:3], batches.groups()[3:], strict=True):
            out[f"beats_clips_per_s_b{batch}"] = float(rate)
    step = re.search(r"gpu_step_bart_base_bf16: ([\d.]+) ms/step \([^)]*batch (\d+), T=(\d+)", text)
    if step:
        out["train_step_s"] = float(step.group(1)) / 1000
        out["train_step_frames"] = float(step.group(2)) * float(step.group(3))
    return out


def _clock(log: str, pattern: str) -> int | None:
    """Seconds since midnight of the first log line (``HH:MM:SS stage logger: ...``) matching ``pattern``."""
    match = re.search(r"(\d\d):(\d\d):(\d\d) [^\n]*" + pattern, log)
    return None if match is None else int(match.group(1)) * 3600 + int(match.group(2)) * 60 + int(match.group(3))


def _train_loop(log: str, summary: dict) -> tuple[float, float, float]:
    """Seconds of a one-epoch train loop: (optimiser steps, validation loss, epoch checkpoint).

    Steps: tqdm's elapsed at the last step (the first ``train captioner: 100%`` line; the bar is
    printed again at close, after validation). Validation: from the "training captioner" log line
    (the loop starts right after it) to the "epoch 1: val/loss" line, less the steps. Checkpoint:
    the rest of the loop (``seconds_per_step x steps`` of the training summary). One-second
    resolution; where a line is missing, the rest of the loop counts as validation.
    """
    loop = summary["seconds_per_step"] * summary["steps"]
    done = next((m for m in _BAR.finditer(log) if m.group(1).strip() == "train captioner"), None)
    if done is None:
        return loop, 0.0, 0.0
    steps = min(_elapsed(done), loop)
    start, val_end = _clock(log, "training captioner:"), _clock(log, r"epoch 1: val/loss")
    if start is None or val_end is None:
        return steps, loop - steps, 0.0
    val = min(max(val_end - start - steps, 0.0), loop - steps)
    return steps, val, loop - steps - val


def extrapolate(
    project: Path, stage: str, measure: Measure, params: dict, phases: dict[str | None, Phase], gpu: dict[str, float], floor: float
) -> Row:
    """One table row: the stage's clips, and its cost on the full corpus (on this CPU idle, and on
    one GPU where known). The extrapolation is linear in the measured wall seconds of each part
    (:func:`_extrapolate_wall`), then scaled to idle-machine seconds by :func:`idle_factor`.

    ``floor``: the fixed seconds of a stage without progress bars (see :func:`split_fixed`).
    """
    idle = idle_factor(stage, measure)
    row = _extrapolate_wall(project, stage, measure, params, phases, gpu, floor, idle)
    row.idle = idle
    row.fixed *= row.idle
    row.full_cpu_s = None if row.full_cpu_s is None else row.full_cpu_s * row.idle
    return row


def _extrapolate_wall(
    project: Path, stage: str, measure: Measure, params: dict, phases: dict[str | None, Phase], gpu: dict[str, float], floor: float, idle: float
) -> Row:
    """:func:`extrapolate` in the measured (loaded) wall seconds; ``idle`` only scales the figures
    quoted in the scaling note."""
    phase_name = _phase_of(stage)
    kind = _kind(stage)
    phase = phases.get(phase_name)
    if phase is None or kind == "configure":
        return Row(stage, 0, measure, measure.wall, measure.wall, None, "constant")
    ws = project / ("data" if phase_name is None else f"data/finetune/{phase_name}")
    full = FULL[phase.dataset]
    log = (project / f"{stage}.log").read_text(errors="replace")
    fixed, work = split_fixed(log, measure.wall, floor)
    if kind in ("corpus", "decode", "features", "clap", "tokenize"):
        cpu = fixed + work * phase.full_total() / phase.total
        gpu_s = None
        rate = gpu.get(f"beats_clips_per_s_b{params['beats']['batch_size']}")
        if kind == "features" and rate:
            # the GPU figure is for 10 s clips; longer clips cost at least proportionally more
            gpu_s = phase.full_seconds() / 10.0 / rate
        return Row(stage, phase.total, measure, fixed, cpu, gpu_s, "per clip")
    if kind == "codebooks":
        sample = json.loads((project / "metrics/rvq.json").read_text())["sample_size"]
        full_frames = full["train"] * phase.seconds["train"] / phase.clips["train"] / 10.0 * PATCHES_PER_10S
        full_sample = min(int(params["rvq"]["kmeans"]["max_samples"]), int(full_frames))
        cpu = fixed + work * full_sample / sample
        return Row(stage, phase.clips["train"], measure, fixed, cpu, None, f"per k-means sample ({sample:,} -> {full_sample:,} frames)")
    if kind == "train":
        summary = json.loads((ws / "model/training_summary.json").read_text())
        train_params = params["train"] if phase_name is None else {**params["train"], **params["finetune"][phase_name]["train"]}
        batch = int(train_params["batch_size"])
        pairs = int(summary["n_train_pairs"])
        steps_s, val_s, ckpt_s = _train_loop(log, summary)
        step_s = steps_s / (pairs / batch)  # per full batch
        val_pairs = phase.clips["val"] * CAPTIONS[phase.dataset]["val"]
        full_pairs = full["train"] * CAPTIONS[phase.dataset]["train"]
        full_val_pairs = full["val"] * CAPTIONS[phase.dataset]["val"]
        once = measure.wall - steps_s - val_s - ckpt_s  # start, model build, saving
        full_steps = math.ceil(full_pairs / batch) * PAPER_EPOCHS
        cpu = once + full_steps * step_s + PAPER_EPOCHS * (val_s * full_val_pairs / max(val_pairs, 1) + ckpt_s)
        gpu_s = None
        if gpu.get("train_step_s"):
            frames = min(params["model"]["max_frames"], PATCHES_PER_10S * phase.seconds["train"] / phase.clips["train"] / 10.0)
            gpu_s = full_steps * gpu["train_step_s"] * batch * frames / gpu["train_step_frames"]
        scaling = (
            f"per step: {step_s * idle:.0f} s per batch of {batch} x {full_steps:,} steps ({PAPER_EPOCHS} epochs); per epoch: "
            f"validation {val_s * idle:.0f} s x {full_val_pairs / max(val_pairs, 1):.0f} (pairs), checkpoint {ckpt_s * idle:.0f} s"
        )
        return Row(stage, phase.clips["train"], measure, once, cpu, gpu_s, scaling)
    if kind == "score":
        beams = int(params["decode_text"]["num_beams"])
        cpu = fixed + work * full["test"] / phase.clips["test"]
        return Row(stage, phase.clips["test"], measure, fixed, cpu, None, f"per test clip x beam ({beams} beams)")
    return Row(stage, phase.total, measure, fixed, fixed + work * phase.full_total() / phase.total, None, "per clip")


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def table(rows: list[Row], corpus_row: tuple[Measure, int] | None = None) -> str:
    """The Markdown table: measured per-stage costs and the full-size extrapolations."""
    head = (
        "| stage | clips | wall (loaded) | CPU | idle est. | fixed | s / clip | peak RSS | written / clip "
        "| full size, this CPU | full size, 1 GPU | scaling |"
    )
    lines = [head, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        per_clip = f"{r.per_clip:.2f}" if r.clips else ""
        written = f"{r.measure.written / r.clips / 1e6:.2f} MB" if r.clips else f"{r.measure.written / 1e6:.2f} MB (total)"
        if _kind(r.stage) == "train":  # the model and the epoch checkpoint: per epoch, not per clip
            written = f"{r.measure.written / 1e9:.2f} GB (total)"
        lines.append(
            f"| {r.stage} | {r.clips or ''} | {r.measure.wall:.0f} s | {r.measure.cpu:.0f} s | {r.measure.wall * r.idle:.0f} s | {r.fixed:.0f} s | "
            f"{per_clip} | {r.measure.peak / 1024:.2f} GiB | {written} | {_hours(r.full_cpu_s)} | {_hours(r.full_gpu_s)} | {r.scaling} |"
        )
    wall = sum(r.measure.wall for r in rows)
    cpu_s = sum(r.measure.cpu for r in rows)
    idle = sum(r.measure.wall * r.idle for r in rows)
    full = sum(r.full_cpu_s or 0.0 for r in rows)
    gpu = sum(r.full_gpu_s or 0.0 for r in rows)
    peak = max(r.measure.peak for r in rows) / 1024
    lines.append(
        f"| **all stages** | | **{wall / 60:.1f} min** | {cpu_s / 60:.1f} min | **{idle / 60:.1f} min** | | | **{peak:.2f} GiB** | | "
        f"**{full / 3600:.1f} h** | {gpu / 3600:.2f} h (2 stages) | |"
    )
    if corpus_row is not None:
        m, n = corpus_row
        # a run continued with --resume may lack the generation's figures (0 = not recorded)
        cpu = f"{m.cpu:.0f} s" if m.cpu else ""
        peak = f"{m.peak / 1024:.2f} GiB" if m.peak else ""
        written = f"{m.written / n / 1e6:.2f} MB" if m.written else ""
        lines.append(f"| (rehearsal-corpus, not a stage) | {n} | {m.wall:.0f} s | {cpu} | | | {m.wall / n:.2f} | {peak} | {written} | | | |")
    return "\n".join(lines)


def stage_order(project: Path, dvc: list[str]) -> list[str]:
    """Every stage of the project's ``dvc.yaml`` in an order ``dvc repro`` may run them: upstream
    first, ties in ``dvc.yaml`` order (``dvc repro --dry`` cannot tell: it needs configure's outputs)."""
    names = _run([*dvc, "stage", "list", "--name-only"], project)[1].split()
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', _run([*dvc, "dag", "--dot"], project)[1])
    waiting = {name: {a for a, b in edges if b == name} for name in names}
    order: list[str] = []
    while waiting:
        ready = next(name for name in names if name in waiting and not waiting[name] - set(order))
        order.append(ready)
        del waiting[ready]
    return order


def _set(params: dict, assignment: str) -> None:
    """Apply ``KEY.PATH=VALUE`` (VALUE parsed as YAML) to ``params``."""
    key, _, value = assignment.partition("=")
    *parents, leaf = key.split(".")
    node = params
    for name in parents:
        node = node[name]
    if leaf not in node:
        raise SystemExit(f"--set {assignment}: no key {key} in {PROFILE.name}")
    node[leaf] = yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audiocaps", type=int, nargs=3, default=list(DEFAULT_AUDIOCAPS), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--clotho", type=int, nargs=3, default=list(DEFAULT_CLOTHO), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile key (e.g. rvq.kmeans.niter=2)")
    parser.add_argument("--workdir", type=Path, help="scratch project folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    parser.add_argument("--append", action="store_true", help=f"append the table to {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--resume", action="store_true", help="continue a killed run in --workdir: run only the stages it has not measured")
    args = parser.parse_args()
    if args.resume and args.workdir is None:
        parser.error("--resume needs the --workdir of the run to continue")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="clapart-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    record = work / "measures.json"  # each stage's figures as soon as it is measured, for --resume
    env = _env()
    dvc = [str(Path(sys.executable).parent / "dvc")] if (Path(sys.executable).parent / "dvc").exists() else ["dvc"]
    project = work / "project"
    if args.resume:
        saved = json.loads(record.read_text())
        header, n_corpus, params = saved["header"], saved["corpus_clips"], yaml.safe_load((project / "params.yaml").read_text())
        corpus = Measure(**saved["corpus"])
        measures = {name: Measure(**m) for name, m in saved["stages"].items()}
        print(f"{header}\n# resumed: {load_state()}", flush=True)
    else:
        params = yaml.safe_load(PROFILE.read_text())
        for assignment in args.set:
            _set(params, assignment)
        header = describe()
        print(header, flush=True)
        make_project(project, params)
        # the scratch cache links outputs instead of copying them: the bytes written are the stages' own
        _run([*dvc, "config", "cache.type", "hardlink"], project)
        sizes = ["--audiocaps", *map(str, args.audiocaps), "--clotho", *map(str, args.clotho)]
        corpus = run_stage(project, "rehearsal-corpus", [sys.executable, "-m", "clapart_core.cli", "rehearsal-corpus", "data/rehearsal", *sizes], env)
        n_corpus = sum(args.audiocaps) + sum(args.clotho)
        measures = {}
        print(f"rehearsal-corpus: {corpus.wall:.0f} s ({corpus.cpu:.0f} s CPU), {n_corpus} clips", file=sys.stderr, flush=True)
    stages = stage_order(project, dvc)
    for stage in stages:
        if stage in measures:
            continue
        m = measures[stage] = run_stage(project, stage, [*dvc, "repro", "-s", stage], env)
        progress = f"{stage}: {m.wall:.0f} s ({m.cpu:.0f} s CPU), peak RSS {m.peak / 1024:.2f} GiB, wrote {m.written / 1e6:.0f} MB"
        print(f"{progress}  ({load_state()})", file=sys.stderr, flush=True)
        saved = {"header": header, "corpus_clips": n_corpus, "corpus": asdict(corpus), "stages": {k: asdict(v) for k, v in measures.items()}}
        record.write_text(json.dumps(saved, indent=1) + "\n")
    total = corpus.wall + sum(m.wall for m in measures.values())
    rerun = _ran(_run([*dvc, "repro"], project)[1])
    if rerun:
        raise SystemExit(f"a dvc repro after the stage-by-stage run reran {rerun}")

    phases: dict[str | None, Phase] = {None: _phase_data(project, None)}
    for name in params.get("finetune") or {}:
        phases[name] = _phase_data(project, name)
    gpu = gpu_figures()
    floor = measures["configure"].wall if "configure" in measures else 0.0
    rows = [extrapolate(project, s, measures[s], params, phases, gpu, floor) for s in stages]
    idle = sum(r.measure.wall * r.idle for r in rows) + corpus.wall * idle_factor("corpus", corpus)
    sizes = "; ".join(
        f"{p.dataset} {p.clips['train']}/{p.clips['val']}/{p.clips['test']} clips ({sum(p.seconds.values()) / 60:.1f} min of audio)" for p in phases.values()
    )
    overrides = f", --set {' '.join(args.set)}" if args.set else ""
    command = "python -m bench.rehearsal " + " ".join(sys.argv[1:])
    resumed = (
        " The run was continued with `--resume` after being killed: the stages measured before keep their figures "
        "(as recorded in measures.json)."
        if args.resume
        else ""
    )
    text = "\n".join(
        [
            f"`{command.strip()}`: {sizes}{overrides}; every stage plus the corpus generation in {total / 60:.1f} min "
            f"of wall time on the shared machine, {idle / 60:.1f} min estimated on an idle one; a final `dvc repro` reran nothing.{resumed}",
            "",
            "```",
            header,
            f"# end: {load_state()}",
            "```",
            "",
            table(rows, (corpus, n_corpus)),
            "",
            f"GPU figures used: {', '.join(f'{k} = {v:g}' for k, v in gpu.items()) or 'none recorded in bench/RESULTS.md'}.",
        ]
    )
    print(text)
    if args.append:
        with RESULTS.open("a") as f:
            f.write(f"\n## Full-size rehearsal (`{command.strip()}`)\n\n{text}\n")
    if args.keep:
        print(f"kept {project}", file=sys.stderr)
    elif args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
