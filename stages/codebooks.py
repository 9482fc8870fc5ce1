"""Stage `codebooks`: the rvq.max_layers x rvq.codebook_size residual k-means codebooks ->
data/codebooks/rvq.npz, metrics/rvq.json. Fitted on a seeded sample of at most
rvq.kmeans.max_samples training-split encoder frames, or of every split of the codebook corpus
(params codebook_corpus, encoded by the cb_* stages with the same encoder), or taken from
rvq.codebooks_file (checked against this run's encoder). The sample is read without loading the
features (encoders/extract.py sample_frames: peak memory does not grow with the corpus,
bench/codebooks_memory.py); FAISS's GPU k-means runs across all visible GPUs where
rvq.kmeans.gpu says so. metrics/rvq.json measures the codebooks on the training split's seeded
sample whichever source they come from, so runs compare directly. Does not read rvq.layers: the
first k layers of this fit are the k-layer fit. For the token types whose codes come straight
from the encoder there is nothing to fit; the files say so."""

import json
from pathlib import Path
from typing import Any

import numpy as np

from clapart_core.encoders.extract import sample_frames
from clapart_core.pipeline import atomic
from clapart_core.pipeline.errors import MissingInputError
from clapart_core.pipeline.params import SPLITS, Workspace, codebook_corpus_unused, read_config, run_stage
from clapart_core.pipeline.storage import RaggedReader
from clapart_core.tokens.rvq import (
    KMeansConfig,
    check_codebooks_file,
    codebook_summary,
    features_fingerprint,
    fit_residual_codebooks,
    kmeans_gpus,
    save_codebooks,
)

TARGET = Path("data/features/encoder/train.h5")


def _corpus_sample(km: dict[str, Any]) -> np.ndarray:
    """A seeded sample of the codebook corpus's frames, every split: ``[M, D]`` float32."""
    features = Workspace(codebook_corpus=True).encoder_features
    paths = [features / f"{split}.h5" for split in SPLITS if (features / f"{split}.h5").is_file()]
    if codebook_corpus_unused(features) or not paths:
        raise MissingInputError(f"{features} holds no codebook-corpus features: run the cb_features stage first (dvc repro cb_features)")
    fingerprint = features_fingerprint(TARGET)
    for path in paths:  # the cb_* stages read the same data/config/features.json: only a stale folder differs
        if features_fingerprint(path) != fingerprint:
            raise MissingInputError(f"{path} was encoded by another encoder than {TARGET}: rerun the cb_features stage (dvc repro cb_features)")
    return sample_frames(paths, km["max_samples"], km["seed"])


def main(_params: dict[str, Any], _ws: Workspace) -> None:  # main phase only: fine-tunes reuse these codebooks
    cfg = read_config("codebooks")
    if not cfg["fit"]:
        save_codebooks("data/codebooks/rvq.npz", np.zeros((0, 0, 0), np.float32), fit=False, reason=cfg["reason"])
        atomic.write_text("metrics/rvq.json", json.dumps({"applies": False, "reason": cfg["reason"]}, indent=2) + "\n")
        return
    km = cfg["kmeans"]
    fingerprint = features_fingerprint(TARGET)
    # the frames every source of codebooks is measured on: same seed, same cap, same file
    target = sample_frames([TARGET], km["max_samples"], km["seed"])
    summary: dict[str, Any] = {"applies": True}
    fit_sample = None
    if cfg["codebooks_file"]:
        file = cfg["codebooks_file"]
        codebooks, meta = check_codebooks_file(file["path"], fingerprint, cfg["codebook_size"], cfg["max_layers"])
        meta = {**meta, "codebooks_file": file["path"], "codebooks_file_sha256": file["sha256"]}
        summary["codebooks"] = {"source": "file", "path": file["path"], "sha256": file["sha256"], "fitted_on": meta.get("corpus")}
    else:
        corpus = cfg["corpus"]
        gpus = kmeans_gpus(km["gpu"])  # before the sample is read: `true` without a GPU fails at once
        sample = target if corpus is None else _corpus_sample(km)
        fit_sample = None if corpus is None else sample
        kmeans = KMeansConfig(niter=km["niter"], seed=km["seed"], gpu=gpus)
        codebooks = fit_residual_codebooks(sample, cfg["max_layers"], cfg["codebook_size"], kmeans)
        where = "training split" if corpus is None else f"codebook_corpus {corpus['source']}:{corpus['root']}"
        # the GPU count is recorded: FAISS's GPU k-means rounds differently, so the codebooks differ from a CPU fit's
        meta = {"fit": True, "seed": km["seed"], "sample_size": len(sample), "niter": km["niter"], "gpus": gpus, "encoder": fingerprint, "corpus": where}
        summary["codebooks"] = {"source": "fitted", "fitted_on": where}
        # FAISS wants >= 39 points per centroid (rvq.MIN_POINTS_PER_CENTROID); below, the fit logs a warning
        summary.update(sample_size=len(sample), points_per_centroid=round(len(sample) / cfg["codebook_size"], 1), kmeans_gpus=gpus)
    with RaggedReader(TARGET) as reader:
        summary["training_frames"] = int(reader.offsets[-1])
    save_codebooks("data/codebooks/rvq.npz", codebooks, **meta)
    summary.update(codebook_summary(target, codebooks, fit_sample))
    atomic.write_text("metrics/rvq.json", json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    run_stage("codebooks", main)
