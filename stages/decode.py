"""Stage `decode`: every manifest clip -> mono int16 PCM at each rate the encoders need, data/audio/sr{rate}/{split}.h5."""

from pathlib import Path

from clapart_core.datasets import read_manifest
from clapart_core.decoded_audio import decode_split
from clapart_core.params import start_stage
from clapart_core.pipeline_config import read_config
from clapart_core.storage import SPLITS

if __name__ == "__main__":
    start_stage("decode")
    cfg = read_config("decode")
    manifest, root = read_manifest(Path("data/corpus/manifest.parquet"))
    for split in SPLITS:
        decode_split(manifest, root, split, Path("data/audio"), cfg["sample_rates"], cfg["max_seconds"])
