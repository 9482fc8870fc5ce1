"""Stage `features`: the encoder outputs of encoder.type per split, in data/features/encoder/:
beats_rvq -> BEATs patch features {split}.h5 ([T, D] fp16 per clip); beats_tokenizer / encodec ->
their discrete codes {split}.parquet (token schema, [T, N])."""

from pathlib import Path

from clapart_core.decoded_audio import audio_path
from clapart_core.params import resolve_device, start_stage
from clapart_core.pipeline_config import BEATS_RATE, ENCODEC_RATE, read_config
from clapart_core.resume import discard
from clapart_core.storage import SPLITS, model_fingerprint

OUT = Path("data/features/encoder")
# shards of finished clip groups, so a rerun after a kill resumes; outside OUT, which DVC deletes before a rerun
RESUME = Path("data/.resume/features")

if __name__ == "__main__":
    start_stage("features")
    cfg = read_config("features")
    spec, device = cfg["encoder"], resolve_device(cfg["device"])
    if cfg["type"] == "beats_rvq":
        from clapart_core.beats import load_beats, random_beats
        from clapart_core.features import extract_beats_features

        model = load_beats(spec["checkpoint"]) if spec["checkpoint"] else random_beats(spec["random"], seed=spec["seed"])
        # the spec lets `clapart caption` rebuild exactly this encoder; the fingerprint proves it did
        attrs = {"encoder": "beats", "spec": spec, "pretrained": bool(spec["checkpoint"]), "weights_sha256": model_fingerprint(model)}
        for split in SPLITS:
            extract_beats_features(model, audio_path(Path("data/audio"), BEATS_RATE, split), OUT / f"{split}.h5", batch_size=cfg["batch_size"], device=device, bf16=cfg["bf16"], attrs=attrs, work_dir=RESUME / split, keep_shards=True)
    elif cfg["type"] == "beats_tokenizer":
        from clapart_core.beats import load_beats_tokenizer, random_beats_tokenizer
        from clapart_core.codecs import extract_beats_tokenizer_tokens

        model = load_beats_tokenizer(spec["checkpoint"]) if spec["checkpoint"] else random_beats_tokenizer(spec["random"], seed=spec["seed"])
        for split in SPLITS:
            extract_beats_tokenizer_tokens(
                model, audio_path(Path("data/audio"), BEATS_RATE, split), OUT / f"{split}.parquet", spec=spec, pretrained=bool(spec["checkpoint"]), batch_size=cfg["batch_size"], device=device, work_dir=RESUME / split, keep_shards=True
            )
    else:
        from clapart_core.codecs import encodec_from_spec, extract_encodec_tokens

        # one clip at a time, as EnCLAP does: padding would change the last frame's codes
        encoder = encodec_from_spec(spec, device)
        for split in SPLITS:
            extract_encodec_tokens(encoder, audio_path(Path("data/audio"), ENCODEC_RATE, split), OUT / f"{split}.parquet", bandwidth=spec["bandwidth"], work_dir=RESUME / split, keep_shards=True)
    discard(RESUME)  # every split is in place
