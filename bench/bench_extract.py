"""Sharded extraction: the `features` stage's clips/s with 1 and with N processes, same run.

A generated demo project (``data.demo``: ``clips`` clips of 4 s; BEATs with random weights at
``beats.random``'s size), decoded once; then ``python -m stages.features`` with
``extract.num_processes`` = 1, 2, ... in turn, the outputs and shards removed between runs, and
the files compared (they must be the same bytes, clapart_core/pipeline/resume.py). clips/s is
clips over the stage's whole wall time, start-up included (each extra process imports torch and
builds the encoder again: a few seconds that a long extraction amortises). On a 2-core CPU the
2-process run splits the same 2 cores (1 thread each instead of 2), so a gain can only come from
the Python/one-thread parts of the loop; on a GPU machine each process gets its own GPU
(``bench/gpu_check.py``).

    python -m bench.bench_extract            # 48 clips, 4-layer BEATs, 1 vs 2 processes
    python -m bench.bench_extract --quick    # 12 clips, 1-layer BEATs
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from bench.memory import ROOT, run_stage

QUICK_BEATS = {"encoder_layers": 1, "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 2, "embed_dim": 64}


def extraction_lines(clips: int, beats_random: dict, processes: Sequence[int], device: str = "cpu") -> Iterator[str]:
    """``features_clips_per_s`` lines, one per process count, on ``device`` (cpu | cuda)."""
    with tempfile.TemporaryDirectory(prefix="clapart_extract_") as tmp:
        project = Path(tmp)
        for name in ("clapart_core", "stages"):
            shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"]["demo"].update(n_clips=clips, clip_seconds=4.0)
        params["beats"].update(random=beats_random, device=device)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(project)}

        def stage(name: str, n: int = 1) -> float:
            params["extract"]["num_processes"] = n
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            return run_stage(project, name, [sys.executable, "-m", f"stages.{name}"], env).wall

        for name in ("corpus", "configure", "decode"):
            stage(name)
        reference = None
        for n in processes:
            shutil.rmtree(project / "data/features", ignore_errors=True)
            shutil.rmtree(project / "data/.resume", ignore_errors=True)
            wall = stage("features", n)
            files = {p.name: p.read_bytes() for p in sorted((project / "data/features/encoder").iterdir())}
            reference = reference or files
            same = "same bytes as 1 process" if files == reference else "FILES DIFFER from the first run"
            yield f"features_clips_per_s_{n}proc: {clips / wall:.2f} clips/s ({clips} clips of 4 s, {wall:.1f} s wall incl. start-up, {device}; {same})"


def main(quick: bool = False) -> Iterator[str]:
    """bench/run.py's entry: 1 vs 2 CPU processes."""
    beats = QUICK_BEATS if quick else {"encoder_layers": 4}
    yield from extraction_lines(12 if quick else 48, beats, (1, 2))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    for line in main(ap.parse_args().quick):
        print(line, flush=True)
