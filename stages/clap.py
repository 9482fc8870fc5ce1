"""Stage `clap`: the global CLAP audio embedding per clip, data/features/clap/{split}.h5 ([1, 512] per clip).
--phase NAME: the fine-tuning corpus.

Kept apart from `features` so that a CLAP change does not recompute BEATs features (and vice versa).
"""

from clapart_core.encoders.clap import CLAP_SAMPLE_RATE, load_clap, random_clap
from clapart_core.corpus.decoded import audio_path
from clapart_core.encoders.extract import extract_clap_embeddings
from clapart_core.pipeline.storage import SPLITS, model_fingerprint
from clapart_core.pipeline.params import resolve_device, start_stage
from clapart_core.pipeline.resume import discard

if __name__ == "__main__":
    params, ws = start_stage("clap")
    cfg = params["clap"]
    device = resolve_device(cfg["device"])
    encoder = load_clap(cfg["checkpoint"], device) if cfg["checkpoint"] else random_clap(cfg["random"], seed=params["seed"])
    encoder.model.to(device)  # a random CLAP is built on the CPU; it runs where clap.device says too
    # the spec lets `clapart caption` rebuild exactly this CLAP (random: its size overrides)
    spec = {"checkpoint": cfg["checkpoint"], "random": cfg["random"], "seed": params["seed"]}
    attrs = {"encoder": "clap", "spec": spec, "pretrained": encoder.pretrained, "weights_sha256": model_fingerprint(encoder.model)}
    for split in SPLITS:
        extract_clap_embeddings(
            encoder,
            audio_path(ws.audio, CLAP_SAMPLE_RATE, split),
            ws.clap_features / f"{split}.h5",
            batch_size=cfg["batch_size"],
            attrs=attrs,
            work_dir=ws.resume / "clap" / split,
            keep_shards=True,
        )
    discard(ws.resume / "clap")  # every split is in place
