"""Peak memory of the `codebooks` stage at 1x and 10x the demo's training features, sample size fixed.

The stage samples at most ``rvq.kmeans.max_samples`` frames (:func:`clapart_core.encoders.extract.sample_frames`
reads only the HDF5 blocks that hold sampled rows, one at a time), so its peak resident set size
should not grow with the features file. This writes a synthetic ``data/features/encoder/train.h5``
(fp16 ``[T, 768]`` per clip, as BEATs writes) of ``clips`` clips of 198 frames (4 s demo clips;
the demo's 400-clip corpus has ~55k training frames) into a temporary project per size, with
the demo's ``rvq`` settings except fewer layers and iterations (memory is the sample, its residual
and FAISS's buffers, not the number of layers), runs ``python -m stages.codebooks`` there and
reads its peak RSS from ``wait4`` (bench/memory.py).

    python -m bench.codebooks_memory                 # 280 and 2800 clips (1x and 10x)
    python -m bench.codebooks_memory --clips 280 28000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from bench.memory import ROOT, run_stage
from clapart_core.pipeline.storage import RaggedWriter

FRAMES_PER_CLIP = 198  # BEATs patches of a 4 s demo clip (496 per 10 s)
DIM = 768


def make_project(dest: Path, clips: int, layers: int, niter: int, max_samples: int) -> Path:
    """Code, the codebooks stage's config (demo rvq settings, ``layers`` x ``niter``, ``max_samples``) and synthetic features."""
    for name in ("clapart_core", "stages"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", dest / "params.yaml")  # the stage runner wants the project's params file
    rvq = yaml.safe_load((ROOT / "params.yaml").read_text())["rvq"]
    kmeans = {**rvq["kmeans"], "niter": niter, "max_samples": max_samples, "gpu": False}
    config = {"fit": True, "max_layers": layers, "codebook_size": rvq["codebook_size"], "kmeans": kmeans}
    (dest / "data/config").mkdir(parents=True)
    (dest / "data/config/codebooks.json").write_text(json.dumps(config))
    (dest / "data/features/encoder").mkdir(parents=True)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((64, FRAMES_PER_CLIP, DIM)).astype(np.float16)  # reused: writing, not drawing, is the cost
    with RaggedWriter(dest / "data/features/encoder/train.h5", (DIM,), np.float16, attrs={}) as writer:
        for i in range(clips):
            writer.append(f"clip{i:06d}", block[i % len(block)] + np.float16(i % 7))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, nargs="+", default=[280, 2800])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--niter", type=int, default=2)
    # under the 1x file's ~55k frames, so that every size fits on the same number of frames
    ap.add_argument("--max-samples", type=int, default=50_000)
    args = ap.parse_args()
    for clips in args.clips:
        with tempfile.TemporaryDirectory(prefix="clapart_cbmem_") as tmp:
            project = make_project(Path(tmp), clips, args.layers, args.niter, args.max_samples)
            size = (project / "data/features/encoder/train.h5").stat().st_size / 2**20
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(project)}
            m = run_stage(project, "codebooks", [sys.executable, "-m", "stages.codebooks"], env)
            report = json.loads((project / "metrics/rvq.json").read_text())
            print(
                f"codebooks_peak_rss: {m.peak:.0f} MiB at {clips} clips ({report['training_frames']} frames, features {size:.0f} MiB; "
                f"sample {report['sample_size']}, {report['points_per_centroid']} per centroid; {args.layers} layers x {args.niter} iterations; "
                f"{m.wall:.1f} s wall, {m.cpu:.1f} s CPU)",
                flush=True,
            )


if __name__ == "__main__":
    main()
