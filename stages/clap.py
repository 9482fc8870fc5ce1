"""Stage `clap`: the global CLAP audio embedding per clip, data/features/clap/{split}.h5 ([1, 512] per clip).
--phase NAME: the fine-tuning corpus.

Kept apart from `features` so that a CLAP change does not recompute BEATs features (and vice versa);
for the same reason it imports no token-type code (clapart_core/encoders/registry.py).
extract.num_processes: as in stages/features.py (same files; not a stage param).
"""

from collections.abc import Callable
from functools import partial
from typing import Any

from clapart_core.corpus.decoded import audio_path
from clapart_core.encoders.clap import clap_from_spec
from clapart_core.encoders.extract import extract_clap_embeddings
from clapart_core.encoders.spec import CLAP_SAMPLE_RATE
from clapart_core.pipeline.params import Workspace, resolve_device, run_stage
from clapart_core.pipeline.resume import discard, run_sharded
from clapart_core.pipeline.storage import SPLITS, model_fingerprint


def steps(params: dict[str, Any], ws: Workspace, device: str) -> list[Callable[[], Any]]:
    """One embedding extraction per split with CLAP on ``device`` (a unit of :func:`run_sharded`)."""
    cfg = params["clap"]
    # the spec lets `clapart caption` rebuild exactly this CLAP (random: its size overrides)
    spec = {"checkpoint": cfg["checkpoint"], "random": cfg["random"], "seed": params["seed"]}
    encoder = clap_from_spec(spec, device)
    encoder.model.to(device)  # a random CLAP is built on the CPU; it runs where clap.device says too
    attrs = {"encoder": "clap", "spec": spec, "pretrained": encoder.pretrained, "weights_sha256": model_fingerprint(encoder.model)}
    return [
        partial(
            extract_clap_embeddings,
            encoder,
            audio_path(ws.audio, CLAP_SAMPLE_RATE, split),
            ws.clap_features / f"{split}.h5",
            batch_size=cfg["batch_size"],
            attrs=attrs,
            work_dir=ws.resume / "clap" / split,
            keep_shards=True,
        )
        for split in SPLITS
    ]


def main(params: dict[str, Any], ws: Workspace) -> None:
    run_sharded(partial(steps, params, ws), params["extract"]["num_processes"], resolve_device(params["clap"]["device"]))
    discard(ws.resume / "clap")  # every split is in place


if __name__ == "__main__":
    run_stage("clap", main)
