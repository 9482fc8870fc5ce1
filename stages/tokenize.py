"""Stage `tokenize`: data/tokens/{split}.parquet for train/score. Types whose codes come from the RVQ
codebooks (clapart_core/encoders/registry.py): encoder features -> codes of the first rvq.layers
codebooks; the others: their codes as extracted (copied unchanged).
--phase NAME: the fine-tuning corpus, with the main run's codebooks."""

import json
import shutil
from typing import Any

import numpy as np
from tqdm import tqdm

from clapart_core.encoders.extract import iter_features
from clapart_core.encoders.registry import encoder_record, token_metadata, token_type
from clapart_core.pipeline.atomic import atomic_path
from clapart_core.pipeline.params import Workspace, read_config, run_stage
from clapart_core.pipeline.storage import SPLITS, RaggedReader, write_tokens
from clapart_core.tokens.rvq import ResidualVQ, load_codebooks

CODEBOOKS = "data/codebooks/rvq.npz"


def main(_params: dict[str, Any], ws: Workspace) -> None:
    feature_dir, out = ws.encoder_features, ws.tokens
    cfg = read_config("tokenize")
    kind = token_type(cfg["type"])
    out.mkdir(parents=True, exist_ok=True)
    if not kind.codebooks:
        for split in SPLITS:
            with atomic_path(out / f"{split}.parquet") as tmp:  # a full disk leaves no half copy
                shutil.copyfile(feature_dir / f"{split}.parquet", tmp)
    else:
        codebooks, fit = load_codebooks(CODEBOOKS)
        rvq = ResidualVQ(codebooks, num_layers=cfg["layers"])
        with RaggedReader(feature_dir / "train.h5") as feats:  # the encoder the features stage recorded
            encoder = encoder_record(kind, json.loads(feats.attrs["spec"]), bool(feats.attrs["pretrained"]), feats.attrs["weights_sha256"])
        meta = token_metadata(kind, rvq.num_layers, rvq.codebook_size, encoder, codebooks=(CODEBOOKS, fit))
        for split in SPLITS:
            with RaggedReader(feature_dir / f"{split}.h5") as feats:
                n_clips = len(feats)
            # a progress bar: at AudioCaps size this stage encodes ~25 M frames (tens of minutes on a CPU)
            features = tqdm(iter_features(feature_dir / f"{split}.h5"), total=n_clips, desc=f"tokenize {split}", unit="clip")
            items = ((cid, rvq.encode(f).numpy().astype(np.int16)) for cid, f in features)
            write_tokens(out / f"{split}.parquet", items, meta)


if __name__ == "__main__":
    run_stage("tokenize", main)
