"""Peak memory of `clapart caption` on a 10 s and a 10-minute 44.1 kHz stereo WAV (issue 13).

`caption` reads a file one stretch at a time (the first ``decode.max_seconds`` recorded in the
model directory, or each ``--window``), so its peak resident set size should not grow with the
file's length. Each run is its own process, ``python -m clapart_core.cli caption``; its own
peak RSS comes from ``wait4`` (``ru_maxrss``, the kernel's high-water mark).

Run from the project root::

    python -m bench.caption_memory                    # a tiny model built here (tests/caption_model.py)
    python -m bench.caption_memory --demo-encoder     # the same with the demo's BEATs sizes (params.yaml beats.random)
    python -m bench.caption_memory --model data/model # the demo model (after `dvc repro`)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss(args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run `python -m clapart_core.cli ARGS` as a child; its own peak RSS (MiB), its wall time (s)
    and its stdout. Fails with the child's stderr when it exits non-zero."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    out_path, err_path = log_dir / "stdout", log_dir / "stderr"
    start = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "clapart_core.cli", *args], cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would be a max over all)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"clapart {' '.join(args)} exited {proc.returncode}:\n{err_path.read_text()[-2000:]}")
    return usage.ru_maxrss / 1024, time.monotonic() - start, out_path.read_text()  # ru_maxrss is in KiB on Linux


def measure(model: Path, work: Path, window: float | None) -> list[str]:
    """The three runs (10 s, 10 min, 10 min window by window) as result lines."""
    sys.path.insert(0, str(ROOT / "tests"))
    from caption_model import write_tone

    short = write_tone(work / "ten_seconds.wav", 440.0, 10.0, sr=44_100, channels=2)
    long = write_tone(work / "ten_minutes.wav", 440.0, 600.0, sr=44_100, channels=2)
    base = ["caption", "--model", str(model), "--device", "cpu", "--format", "jsonl"]
    env = {"OMP_NUM_THREADS": "1"}  # the same threads in every run, and no spin-waits on a shared machine
    rss_short, t_short, _ = peak_rss([*base, str(short)], work, env)
    rss_long, t_long, out = peak_rss([*base, str(long)], work, env)
    cropped = json.loads(out)["end"]
    lines = [
        f"caption_rss_10s: {rss_short:.0f} MiB (10 s 44.1 kHz stereo WAV, {t_short:.1f} s wall)",
        f"caption_rss_10min: {rss_long:.0f} MiB ({rss_long / rss_short:.2f}x the 10 s file; first {cropped:g} s read, {t_long:.1f} s wall)",
    ]
    if window:
        rss_window, t_window, out = peak_rss([*base, "--window", str(window), str(long)], work, env)
        n = len(out.splitlines())
        ratio = rss_window / rss_short
        lines.append(f"caption_rss_10min_window: {rss_window:.0f} MiB ({ratio:.2f}x the 10 s file; {n} windows of {window:g} s, {t_window:.1f} s wall)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model directory (default: build the tests' tiny model)")
    parser.add_argument("--window", type=float, default=10.0, help="also caption the 10-minute file with --window (0: skip)")
    parser.add_argument("--demo-encoder", action="store_true", help="build the model with params.yaml's beats.random sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clapart-caption-mem-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            import yaml
            from caption_model import build_model_dir

            sizes = yaml.safe_load((ROOT / "params.yaml").read_text())["beats"]["random"] if args.demo_encoder else None
            model = build_model_dir(work, beats_random=sizes)
        for line in measure(model, work, args.window or None):
            print(line, flush=True)


if __name__ == "__main__":
    main()
