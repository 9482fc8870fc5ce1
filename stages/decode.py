"""Stage `decode`: every manifest clip -> mono int16 PCM at each rate in decode.sample_rates, data/audio/sr{rate}/{split}.h5."""

from pathlib import Path

from clapart_core.datasets import read_manifest
from clapart_core.decoded_audio import decode_split
from clapart_core.storage import SPLITS
from clapart_core.params import start_stage

if __name__ == "__main__":
    params = start_stage("decode")
    manifest, root = read_manifest(Path("data/corpus/manifest.parquet"))
    for split in SPLITS:
        decode_split(manifest, root, split, Path("data/audio"), params["decode"]["sample_rates"], params["decode"]["max_seconds"])
