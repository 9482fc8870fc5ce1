"""Peak memory of the streaming stages at 1x and 10x the demo corpus.

`decode`, `features` and `tokenize` stream clip by clip (or batch by batch, or group by group
for resumable `features`), so their peak resident set size should not grow with the number of
clips. This builds a temporary copy of the project per corpus size (the demo params, only
``data.demo.n_clips`` changed), runs the stages in pipeline order (corpus, configure, decode,
features, codebooks, tokenize) as `python -m stages.NAME`, and reads each stage process's own
peak RSS from ``wait4`` (``ru_maxrss``, the kernel's high-water mark). It also samples the RSS
(``/proc/PID/statm``, every 50 ms) to report the peak over the first and the second half of the
run: a stage that streams levels off early, one that accumulates per clip is higher in the
second half.

Run from the project root (CPU-heavy: features at 4000 clips takes several minutes)::

    python bench/memory.py                       # 400 and 4000 clips
    python bench/memory.py --clips 40 400 --keep # other sizes; keep the temporary projects
    python bench/memory.py --clips 4000 --until decode
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("corpus", "configure", "decode", "features", "codebooks", "tokenize")
MEASURED = ("decode", "features", "codebooks", "tokenize")


def make_project(dest: Path, n_clips: int) -> Path:
    """A copy of the code and params with ``data.demo.n_clips = n_clips`` (no git/DVC needed)."""
    for name in ("clapart_core", "stages"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["demo"]["n_clips"] = n_clips
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


@dataclass
class Measure:
    """One stage run: ``peak`` (MiB, kernel high-water mark), the sampled peaks (MiB) over the
    first and second half of the run, the wall time (s), the bytes it wrote to files and the CPU
    time it used (s, user + system): on a shared machine the wall time depends on the others'
    load, the CPU time hardly."""

    peak: float
    first_half: float
    second_half: float
    wall: float
    written: int = 0
    cpu: float = 0.0


def _written_bytes(pid: int) -> int:
    """Bytes a process (and the children it has reaped) wrote to storage, net of truncated
    writes (``/proc/PID/io``: ``write_bytes - cancelled_write_bytes``); 0 where unavailable."""
    try:
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])
    except (OSError, KeyError, ValueError):
        return 0


def run_stage(project: Path, name: str, cmd: list[str] | None = None, env: dict[str, str] | None = None) -> Measure:
    """Run one stage as its own process and measure its memory, wall time and bytes written.

    ``cmd`` (default ``python -m stages.NAME``) runs in ``project`` with ``env`` (default: this
    environment, offline, no progress bars); its output goes to ``project/NAME.log``. The peak is
    the largest of the process and the children it waited for (``wait4`` reports both), so a
    stage run by ``dvc repro -s NAME`` is measured through DVC.
    """
    env = env or {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    log = project / f"{name}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd or [sys.executable, "-m", f"stages.{name}"], cwd=project, env=env, stdout=err, stderr=err)
        statm = Path(f"/proc/{proc.pid}/statm")
        # WNOWAIT: notice the exit but leave the zombie, whose /proc/PID/io still holds its totals
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            try:
                samples.append((time.monotonic() - start, int(statm.read_text().split()[1]) * page_mib))
            except (OSError, IndexError, ValueError):  # exiting between the check and the read
                pass
            time.sleep(0.05)
        written = _written_bytes(proc.pid)
        # wait4 gives this child's own rusage (getrusage(RUSAGE_CHILDREN) would be a max over all stages)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    if proc.returncode:
        raise SystemExit(f"stage {name} failed in {project}:\n{log.read_text(errors='replace')[-3000:]}")
    first = max((rss for t, rss in samples if t < wall / 2), default=0.0)
    second = max((rss for t, rss in samples if t >= wall / 2), default=0.0)
    cpu = usage.ru_utime + usage.ru_stime  # like ru_maxrss, includes the children it waited for
    return Measure(usage.ru_maxrss / 1024, first, second, wall, written, cpu)  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[400, 4000], help="corpus sizes (data.demo.n_clips)")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="last stage to run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args()
    stages = STAGES[: STAGES.index(args.until) + 1]

    results: dict[int, dict[str, Measure]] = {}
    for n in args.clips:
        tmp = Path(tempfile.mkdtemp(prefix=f"clapart-mem{n}-"))
        project = make_project(tmp, n)
        results[n] = {}
        for name in stages:
            m = results[n][name] = run_stage(project, name)
            sampled = f"sampled: {m.first_half:.0f} first half, {m.second_half:.0f} second half"
            print(f"n_clips={n} {name}: peak RSS {m.peak:.0f} MiB ({sampled}), {m.wall:.0f} s", file=sys.stderr, flush=True)
        if args.keep:
            print(f"kept {project}", file=sys.stderr)
        else:
            shutil.rmtree(tmp)

    sizes = args.clips
    head = [f"peak RSS @ {n} clips" for n in sizes] + ([f"ratio {sizes[-1]}/{sizes[0]}"] if len(sizes) > 1 else [])
    head += [f"1st / 2nd half @ {n}" for n in sizes] + [f"wall @ {n}" for n in sizes]
    print("| stage | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for name in (s for s in MEASURED if s in stages):
        ms = [results[n][name] for n in sizes]
        row = [f"{m.peak:.0f} MiB" for m in ms] + ([f"{ms[-1].peak / ms[0].peak:.2f}"] if len(sizes) > 1 else [])
        row += [f"{m.first_half:.0f} / {m.second_half:.0f} MiB" for m in ms] + [f"{m.wall:.0f} s" for m in ms]
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
