"""Stage `features`: what the encoder of encoder.type extracts per split, in data/features/encoder/
(clapart_core/encoders/registry.py): for the types whose codes come from the RVQ codebooks, encoder
features {split}.h5 ([T, D] fp16 per clip); for the others, their discrete codes {split}.parquet
(token schema, [T, N]). --phase NAME: the fine-tuning corpus; --codebook-corpus: the codebook corpus
(the same encoder settings, so that the codebooks fitted on it apply to the training features;
nothing to do when the decode stage marked it unused)."""

from typing import Any

from clapart_core.corpus.decoded import audio_path
from clapart_core.encoders.registry import encoder_from_spec
from clapart_core.pipeline.params import Workspace, codebook_corpus_unused, mark_unused, read_config, resolve_device, run_stage
from clapart_core.pipeline.resume import discard
from clapart_core.pipeline.storage import SPLITS


def main(_params: dict[str, Any], ws: Workspace) -> None:
    # resume: shards of finished clip groups, so a rerun after a kill resumes; outside `out`,
    # which DVC deletes before a rerun
    out, audio, resume = ws.encoder_features, ws.audio, ws.resume / "features"
    if ws.codebook_corpus and codebook_corpus_unused(audio):
        mark_unused(out)
        return
    cfg = read_config("features")
    # a refused checkpoint (e.g. a pickle that would run code) is a one-line CheckpointError: run_stage
    encoder = encoder_from_spec(cfg["type"], cfg["encoder"], resolve_device(cfg["device"]))
    kind = encoder.kind
    for split in SPLITS:
        src = audio_path(audio, kind.sample_rate, split)
        encoder.extract(src, out / f"{split}{kind.suffix}", batch_size=cfg["batch_size"], bf16=cfg["bf16"], work_dir=resume / split, keep_shards=True)
    discard(resume)  # every split is in place


if __name__ == "__main__":
    run_stage("features", main)
