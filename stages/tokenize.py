"""Stage `tokenize`: data/tokens/{split}.parquet for train/score. Types whose codes come from the RVQ
codebooks (clapart_core/encoders/registry.py): encoder features -> codes of the first rvq.layers
codebooks, resumably (shards in data/resume/tokenize); the others: their codes as extracted (copied
unchanged). extract.num_processes: as in stages/features.py (same files; not a stage param).
--phase NAME: the fine-tuning corpus, with the main run's codebooks."""

import json
import shutil
from collections.abc import Callable
from functools import partial
from typing import Any

from clapart_core.encoders.registry import encoder_record, token_metadata, token_type
from clapart_core.pipeline.atomic import atomic_path
from clapart_core.pipeline.params import Workspace, read_config, run_stage
from clapart_core.pipeline.resume import discard, run_sharded
from clapart_core.pipeline.storage import SPLITS, RaggedReader
from clapart_core.tokens.encode import tokenize_features
from clapart_core.tokens.rvq import ResidualVQ, load_codebooks

CODEBOOKS = "data/codebooks/rvq.npz"


def steps(cfg: dict[str, Any], ws: Workspace, _device: str) -> list[Callable[[], Any]]:
    """One quantisation per split (a unit of :func:`run_sharded`; the codebooks run on the CPU)."""
    feature_dir, out = ws.encoder_features, ws.tokens
    kind = token_type(cfg["type"])
    codebooks, fit = load_codebooks(CODEBOOKS)
    rvq = ResidualVQ(codebooks, num_layers=cfg["layers"])
    with RaggedReader(feature_dir / "train.h5") as feats:  # the encoder the features stage recorded
        encoder = encoder_record(kind, json.loads(feats.attrs["spec"]), bool(feats.attrs["pretrained"]), feats.attrs["weights_sha256"])
    meta = token_metadata(kind, rvq.num_layers, rvq.codebook_size, encoder, codebooks=(CODEBOOKS, fit))
    return [
        partial(tokenize_features, rvq, feature_dir / f"{split}.h5", out / f"{split}.parquet", meta, work_dir=ws.resume / "tokenize" / split, keep_shards=True)
        for split in SPLITS
    ]


def main(params: dict[str, Any], ws: Workspace) -> None:
    cfg = read_config("tokenize")
    ws.tokens.mkdir(parents=True, exist_ok=True)
    if not token_type(cfg["type"]).codebooks:
        for split in SPLITS:
            with atomic_path(ws.tokens / f"{split}.parquet") as tmp:  # a full disk leaves no half copy
                shutil.copyfile(ws.encoder_features / f"{split}.parquet", tmp)
        return
    run_sharded(partial(steps, cfg, ws), params["extract"]["num_processes"], "cpu")
    discard(ws.resume / "tokenize")  # every split is in place


if __name__ == "__main__":
    run_stage("tokenize", main)
