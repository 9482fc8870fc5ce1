"""Stage `features`: BEATs patch features per split, data/features/beats/{split}.h5 ([T, D] fp16 per clip)."""

from pathlib import Path

from clapart_core.beats import load_beats, random_beats
from clapart_core.decoded_audio import audio_path
from clapart_core.features import BEATS_SAMPLE_RATE, extract_beats_features
from clapart_core.storage import SPLITS, model_fingerprint
from clapart_core.params import resolve_device, start_stage

if __name__ == "__main__":
    params = start_stage("features")
    cfg = params["beats"]
    if params["encoder"]["type"] != "beats_rvq":
        raise SystemExit(f"encoder.type={params['encoder']['type']!r} is not supported yet; use beats_rvq")
    model = load_beats(cfg["checkpoint"]) if cfg["checkpoint"] else random_beats(cfg["random"], seed=params["seed"])
    # the spec lets `clapart caption` rebuild exactly this encoder; the fingerprint proves it did
    spec = {"checkpoint": cfg["checkpoint"], "random": cfg["random"], "seed": params["seed"]}
    attrs = {"encoder": "beats", "spec": spec, "pretrained": bool(cfg["checkpoint"]), "weights_sha256": model_fingerprint(model)}
    for split in SPLITS:
        extract_beats_features(
            model,
            audio_path(Path("data/audio"), BEATS_SAMPLE_RATE, split),
            Path(f"data/features/beats/{split}.h5"),
            batch_size=cfg["batch_size"],
            device=resolve_device(cfg["device"]),
            bf16=cfg["bf16"],
            attrs=attrs,
        )
