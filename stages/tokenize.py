"""Stage `tokenize`: data/tokens/{split}.parquet for train/score. beats_rvq: BEATs features -> codes of
the first rvq.layers codebooks; the discrete types: their codes as extracted (copied unchanged).
--phase NAME: the fine-tuning corpus, with the main run's codebooks."""

import json
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clapart_core.encoders.extract import iter_features
from clapart_core.pipeline.params import start_stage
from clapart_core.pipeline.config import read_config
from clapart_core.tokens.rvq import ResidualVQ, load_codebooks
from clapart_core.pipeline.storage import SPLITS, RaggedReader, partial_path, write_tokens

CODEBOOKS = "data/codebooks/rvq.npz"

if __name__ == "__main__":
    _, ws = start_stage("tokenize")
    feature_dir, out = ws.encoder_features, ws.tokens
    cfg = read_config("tokenize")
    out.mkdir(parents=True, exist_ok=True)
    if cfg["type"] != "beats_rvq":
        for split in SPLITS:
            shutil.copyfile(feature_dir / f"{split}.parquet", partial_path(out / f"{split}.parquet"))
            partial_path(out / f"{split}.parquet").replace(out / f"{split}.parquet")
    else:
        codebooks, fit = load_codebooks(CODEBOOKS)
        rvq = ResidualVQ(codebooks, num_layers=cfg["layers"])
        with RaggedReader(feature_dir / "train.h5") as feats:
            encoder = {"name": "beats", "spec": json.loads(feats.attrs["spec"]), "pretrained": bool(feats.attrs["pretrained"]), "weights_sha256": feats.attrs["weights_sha256"]}
        meta = {
            "num_codebooks": rvq.num_layers,
            "codebook_size": rvq.codebook_size,
            "rvq_layers": rvq.num_layers,
            "codebooks_file": CODEBOOKS,
            "codebooks_fit": fit,
            "encoder_type": "beats_rvq",
            "encoder": encoder,
        }
        for split in SPLITS:
            with RaggedReader(feature_dir / f"{split}.h5") as feats:
                n_clips = len(feats)
            # a progress bar: at AudioCaps size this stage encodes ~25 M frames (tens of minutes on a CPU)
            features = tqdm(iter_features(feature_dir / f"{split}.h5"), total=n_clips, desc=f"tokenize {split}", unit="clip")
            items = ((cid, rvq.encode(f).numpy().astype(np.int16)) for cid, f in features)
            write_tokens(out / f"{split}.parquet", items, meta)
