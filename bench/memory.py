"""Peak memory of the streaming stages at 1x and 10x the demo corpus.

`decode`, `features` and `tokenize` stream clip by clip (or batch by batch, or group by group
for resumable `features`), so their peak resident set size should not grow with the number of
clips. This builds a temporary copy of the project per corpus size (the demo params, only
``data.demo.n_clips`` changed), runs the stages in pipeline order (corpus, configure, decode,
features, codebooks, tokenize) as `python -m stages.NAME`, and reads each stage process's own
peak RSS from ``wait4`` (``ru_maxrss``, the kernel's high-water mark, no sampling).

Run from the project root (CPU-heavy: features at 4000 clips takes several minutes)::

    python bench/memory.py                       # 400 and 4000 clips
    python bench/memory.py --clips 40 400 --keep # other sizes; keep the temporary projects
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


def run_stage(project: Path, name: str) -> tuple[float, float]:
    """Run one stage; returns (peak RSS in MiB of its process, wall seconds)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    start = time.monotonic()
    log = project / f"{name}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=project, env=env, stdout=err, stderr=err)
        # wait4 gives this child's own rusage (getrusage(RUSAGE_CHILDREN) would be a max over all stages)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"stage {name} failed in {project}:\n{log.read_text(errors='replace')[-3000:]}")
    return usage.ru_maxrss / 1024, time.monotonic() - start  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[400, 4000], help="corpus sizes (data.demo.n_clips)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args()

    results: dict[int, dict[str, tuple[float, float]]] = {}
    for n in args.clips:
        tmp = Path(tempfile.mkdtemp(prefix=f"clapart-mem{n}-"))
        project = make_project(tmp, n)
        results[n] = {}
        for name in STAGES:
            results[n][name] = run_stage(project, name)
            print(f"n_clips={n} {name}: peak RSS {results[n][name][0]:.0f} MiB, {results[n][name][1]:.0f} s", file=sys.stderr, flush=True)
        if args.keep:
            print(f"kept {project}", file=sys.stderr)
        else:
            shutil.rmtree(tmp)

    sizes = args.clips
    print("| stage | " + " | ".join(f"peak RSS @ {n} clips" for n in sizes) + f" | ratio {sizes[-1]}/{sizes[0]} | " + " | ".join(f"wall @ {n}" for n in sizes) + " |")
    print("|---" * (2 * len(sizes) + 2) + "|")
    for name in MEASURED:
        peaks = [results[n][name][0] for n in sizes]
        walls = [results[n][name][1] for n in sizes]
        print(f"| {name} | " + " | ".join(f"{p:.0f} MiB" for p in peaks) + f" | {peaks[-1] / peaks[0]:.2f} | " + " | ".join(f"{w:.0f} s" for w in walls) + " |")


if __name__ == "__main__":
    main()
