"""Stage `codebooks`: fit rvq.max_layers x rvq.codebook_size residual k-means codebooks on a
seeded sample of at most rvq.kmeans.max_samples training-split encoder frames, read without loading
the features (encoders/extract.py sample_frames: peak memory does not grow with the corpus,
bench/codebooks_memory.py), on FAISS's GPU k-means across all visible GPUs where rvq.kmeans.gpu says
so -> data/codebooks/rvq.npz, metrics/rvq.json.
Does not read rvq.layers: the first k layers of this fit are the k-layer fit. For the token
types whose codes come straight from the encoder there is nothing to fit; the files say so."""

import json
from pathlib import Path
from typing import Any

import numpy as np

from clapart_core.encoders.extract import sample_frames
from clapart_core.pipeline import atomic
from clapart_core.pipeline.params import Workspace, read_config, run_stage
from clapart_core.pipeline.storage import RaggedReader
from clapart_core.tokens.rvq import KMeansConfig, fit_residual_codebooks, kmeans_gpus, quantisation_report, save_codebooks


def main(_params: dict[str, Any], _ws: Workspace) -> None:  # main phase only: fine-tunes reuse these codebooks
    cfg = read_config("codebooks")
    if not cfg["fit"]:
        save_codebooks("data/codebooks/rvq.npz", np.zeros((0, 0, 0), np.float32), fit=False, reason=cfg["reason"])
        summary = {"applies": False, "reason": cfg["reason"]}
    else:
        km = cfg["kmeans"]
        train = Path("data/features/encoder/train.h5")
        gpus = kmeans_gpus(km["gpu"])  # before the sample is read: `true` without a GPU fails at once
        sample = sample_frames([train], km["max_samples"], km["seed"])
        kmeans = KMeansConfig(niter=km["niter"], seed=km["seed"], gpu=gpus)
        codebooks = fit_residual_codebooks(sample, cfg["max_layers"], cfg["codebook_size"], kmeans)
        # the GPU count is recorded: FAISS's GPU k-means rounds differently, so the codebooks differ from a CPU fit's
        save_codebooks("data/codebooks/rvq.npz", codebooks, fit=True, seed=km["seed"], sample_size=len(sample), niter=km["niter"], gpus=gpus)
        report = quantisation_report(sample, codebooks)
        with RaggedReader(train) as reader:
            frames = int(reader.offsets[-1])
        # FAISS wants >= 39 points per centroid (rvq.MIN_POINTS_PER_CENTROID); below, the fit logs a warning
        per_centroid = round(len(sample) / cfg["codebook_size"], 1)
        summary = {"applies": True, "training_frames": frames, "sample_size": len(sample), "points_per_centroid": per_centroid, "kmeans_gpus": gpus}
        summary.update(relative_error=report[-1]["relative_error"], layers=report)
    atomic.write_text("metrics/rvq.json", json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    run_stage("codebooks", main)
