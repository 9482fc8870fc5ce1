"""Stage `tokenize`: BEATs features -> codes of the first rvq.layers codebooks, data/tokens/{split}.parquet."""

import json
from pathlib import Path

import numpy as np

from clapart_core.features import iter_features
from clapart_core.params import start_stage
from clapart_core.rvq import ResidualVQ, load_codebooks
from clapart_core.storage import SPLITS, RaggedReader, write_tokens

CODEBOOKS = "data/codebooks/rvq.npz"

if __name__ == "__main__":
    params = start_stage("tokenize")
    codebooks, fit = load_codebooks(CODEBOOKS)
    rvq = ResidualVQ(codebooks, num_layers=params["rvq"]["layers"])
    with RaggedReader(Path("data/features/beats/train.h5")) as feats:
        encoder = {k: feats.attrs[k] for k in ("spec", "pretrained", "weights_sha256")}
    meta = {
        "num_codebooks": rvq.num_layers,
        "codebook_size": rvq.codebook_size,
        "rvq_layers": rvq.num_layers,
        "codebooks_file": CODEBOOKS,
        "codebooks_fit": fit,
        "encoder_type": "beats_rvq",
        "encoder": {"name": "beats", "spec": json.loads(encoder["spec"]), "pretrained": bool(encoder["pretrained"]), "weights_sha256": encoder["weights_sha256"]},
    }
    for split in SPLITS:
        items = ((cid, rvq.encode(f).numpy().astype(np.int16)) for cid, f in iter_features(Path(f"data/features/beats/{split}.h5")))
        write_tokens(Path(f"data/tokens/{split}.parquet"), items, meta)
