"""Stage `decode`: every manifest clip -> mono int16 PCM at each rate the encoders need, data/audio/sr{rate}/{split}.h5;
skipped and flagged clips -> metrics/decode.json (decode.on_error: fail | skip). --phase NAME: the fine-tuning corpus."""

import json

from clapart_core.corpus.decoded import ClipDecodeError, DecodeReport, decode_split
from clapart_core.corpus.manifest import ManifestError, read_manifest
from clapart_core.pipeline import atomic
from clapart_core.pipeline.params import SPLITS, read_config, start_stage

if __name__ == "__main__":
    _, ws = start_stage("decode")
    cfg = read_config("decode")
    try:
        manifest, root = read_manifest(ws.manifest)
    except ManifestError as err:  # e.g. a hand-edited manifest: one line, not a traceback
        raise SystemExit(f"error: decode: {err}") from None
    report = DecodeReport(cfg["on_error"])
    try:
        for split in SPLITS:
            decode_split(manifest, root, split, ws.audio, cfg["sample_rates"], cfg["max_seconds"], cfg["on_error"], report)
    except ClipDecodeError as err:
        raise SystemExit(f"error: decode: {err} (set decode.on_error: skip to leave such clips out)") from None
    atomic.write_text(ws.metrics / "decode.json", json.dumps(report.to_json(), indent=2) + "\n")
