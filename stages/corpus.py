"""Stage `corpus`: build data/corpus/manifest.parquet from data.source (generating the demo corpus into data.root first for `demo`)."""

from pathlib import Path

from clapart_core.datasets import build_manifest, write_manifest
from clapart_core.params import start_stage

if __name__ == "__main__":
    params = start_stage("corpus")
    data, seed = params["data"], params["seed"]
    source = data["source"]
    if source == "demo":
        options = {"n_clips": data["demo"]["n_clips"], "clip_seconds": data["demo"]["clip_seconds"], "seed": seed}
    else:
        options = dict(data.get(source) or {})
    download = {"download": data["download"]} if source in ("clotho", "audiocaps") else {}
    table = build_manifest(source, Path(data["root"]), strict=data["strict"], **download, **options)
    write_manifest(table, Path("data/corpus/manifest.parquet"))
