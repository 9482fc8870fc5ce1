"""Stage `features`: what the encoder of encoder.type extracts per split, in data/features/encoder/
(clapart_core/encoders/registry.py): for the types whose codes come from the RVQ codebooks, encoder
features {split}.h5 ([T, D] fp16 per clip); for the others, their discrete codes {split}.parquet
(token schema, [T, N]). --phase NAME: the fine-tuning corpus; --codebook-corpus: the codebook corpus
(the same encoder settings, so that the codebooks fitted on it apply to the training features;
nothing to do when the decode stage marked it unused).

extract.num_processes > 1 shards the clips over that many processes (one per GPU on a CUDA device),
with the same files as a result (clapart_core/pipeline/resume.py, run_sharded). It is read from
params.yaml, not from data/config/features.json, and dvc.yaml does not list it: it changes how
fast, not what, so changing it must not rerun the stage."""

from collections.abc import Callable
from functools import partial
from typing import Any

from clapart_core.corpus.decoded import audio_path
from clapart_core.encoders.registry import encoder_from_spec
from clapart_core.pipeline.params import Workspace, codebook_corpus_unused, mark_unused, read_config, resolve_device, run_stage
from clapart_core.pipeline.resume import discard, run_sharded
from clapart_core.pipeline.storage import SPLITS


def steps(cfg: dict[str, Any], ws: Workspace, device: str) -> list[Callable[[], Any]]:
    """One extraction per split with the encoder built on ``device`` (a unit of :func:`run_sharded`)."""
    # a refused checkpoint (e.g. a pickle that would run code) is a one-line CheckpointError: run_stage
    encoder = encoder_from_spec(cfg["type"], cfg["encoder"], device)
    kind = encoder.kind
    # resume: shards of finished clip groups, so a rerun after a kill resumes; outside the output
    # directory, which DVC deletes before a rerun
    run = {"batch_size": cfg["batch_size"], "bf16": cfg["bf16"], "keep_shards": True}
    return [
        partial(
            encoder.extract, audio_path(ws.audio, kind.sample_rate, split), ws.encoder_features / f"{split}{kind.suffix}",
            work_dir=ws.resume / "features" / split, **run,
        )
        for split in SPLITS
    ]


def main(params: dict[str, Any], ws: Workspace) -> None:
    if ws.codebook_corpus and codebook_corpus_unused(ws.audio):
        mark_unused(ws.encoder_features)
        return
    cfg = read_config("features")
    run_sharded(partial(steps, cfg, ws), params["extract"]["num_processes"], resolve_device(cfg["device"]))
    discard(ws.resume / "features")  # every split is in place


if __name__ == "__main__":
    run_stage("features", main)
