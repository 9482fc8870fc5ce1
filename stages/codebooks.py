"""Stage `codebooks`: fit rvq.max_layers x rvq.codebook_size residual k-means codebooks on a
seeded sample of training-split BEATs frames -> data/codebooks/rvq.npz, metrics/rvq.json.
Does not read rvq.layers: the first k layers of this fit are the k-layer fit."""

import json
from pathlib import Path

from clapart_core.features import sample_frames
from clapart_core.params import start_stage
from clapart_core.rvq import KMeansConfig, fit_residual_codebooks, quantisation_report, save_codebooks

if __name__ == "__main__":
    params = start_stage("codebooks")
    rvq, km = params["rvq"], params["rvq"]["kmeans"]
    sample = sample_frames([Path("data/features/beats/train.h5")], km["max_samples"], km["seed"])
    codebooks = fit_residual_codebooks(sample, rvq["max_layers"], rvq["codebook_size"], KMeansConfig(niter=km["niter"], seed=km["seed"]))
    save_codebooks("data/codebooks/rvq.npz", codebooks, seed=km["seed"], sample_size=len(sample), niter=km["niter"])
    report = quantisation_report(sample, codebooks)
    Path("metrics").mkdir(exist_ok=True)
    summary = {"sample_size": len(sample), "relative_error": report[-1]["relative_error"], "layers": report}
    Path("metrics/rvq.json").write_text(json.dumps(summary, indent=2) + "\n")
