"""Stage `features`: the encoder outputs of encoder.type per split, in data/features/encoder/:
beats_rvq -> BEATs patch features {split}.h5 ([T, D] fp16 per clip); beats_tokenizer / encodec ->
their discrete codes {split}.parquet (token schema, [T, N]). --phase NAME: the fine-tuning corpus."""

from clapart_core.corpus.decoded import audio_path
from clapart_core.pipeline.params import resolve_device, start_stage
from clapart_core.pipeline.config import BEATS_RATE, ENCODEC_RATE, read_config
from clapart_core.pipeline.resume import discard
from clapart_core.pipeline.storage import SPLITS, model_fingerprint

if __name__ == "__main__":
    _, ws = start_stage("features")
    # resume: shards of finished clip groups, so a rerun after a kill resumes; outside `out`,
    # which DVC deletes before a rerun
    out, audio, resume = ws.encoder_features, ws.audio, ws.resume / "features"
    cfg = read_config("features")
    spec, device = cfg["encoder"], resolve_device(cfg["device"])
    if cfg["type"] == "beats_rvq":
        from clapart_core.encoders.beats import CheckpointError, load_beats, random_beats
        from clapart_core.encoders.extract import extract_beats_features

        try:  # a refused checkpoint (e.g. a pickle that would run code) is a one-line error
            model = load_beats(spec["checkpoint"]) if spec["checkpoint"] else random_beats(spec["random"], seed=spec["seed"])
        except CheckpointError as err:
            raise SystemExit(f"error: features: {err}") from None
        # the spec lets `clapart caption` rebuild exactly this encoder; the fingerprint proves it did
        attrs = {"encoder": "beats", "spec": spec, "pretrained": bool(spec["checkpoint"]), "weights_sha256": model_fingerprint(model)}
        for split in SPLITS:
            extract_beats_features(model, audio_path(audio, BEATS_RATE, split), out / f"{split}.h5", batch_size=cfg["batch_size"], device=device, bf16=cfg["bf16"], attrs=attrs, work_dir=resume / split, keep_shards=True)
    elif cfg["type"] == "beats_tokenizer":
        from clapart_core.encoders.beats import CheckpointError, load_beats_tokenizer, random_beats_tokenizer
        from clapart_core.encoders.encodec import extract_beats_tokenizer_tokens

        try:
            model = load_beats_tokenizer(spec["checkpoint"]) if spec["checkpoint"] else random_beats_tokenizer(spec["random"], seed=spec["seed"])
        except CheckpointError as err:
            raise SystemExit(f"error: features: {err}") from None
        for split in SPLITS:
            extract_beats_tokenizer_tokens(
                model, audio_path(audio, BEATS_RATE, split), out / f"{split}.parquet", spec=spec, pretrained=bool(spec["checkpoint"]), batch_size=cfg["batch_size"], device=device, work_dir=resume / split, keep_shards=True
            )
    else:
        from clapart_core.encoders.encodec import encodec_from_spec, extract_encodec_tokens

        # one clip at a time, as EnCLAP does: padding would change the last frame's codes
        encoder = encodec_from_spec(spec, device)
        for split in SPLITS:
            extract_encodec_tokens(encoder, audio_path(audio, ENCODEC_RATE, split), out / f"{split}.parquet", bandwidth=spec["bandwidth"], work_dir=resume / split, keep_shards=True)
    discard(resume)  # every split is in place
