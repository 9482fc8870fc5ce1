"""Stage `corpus`: build data/corpus/manifest.parquet (generating the demo corpus into data.root first for data.source=demo)."""

from pathlib import Path

from clapart_core.datasets import build_manifest, write_manifest
from clapart_core.params import start_stage

if __name__ == "__main__":
    params = start_stage("corpus")
    data = params["data"]
    options = {"n_clips": data["demo"]["n_clips"], "clip_seconds": data["demo"]["clip_seconds"], "seed": params["seed"]} if data["source"] == "demo" else {}
    table = build_manifest(data["source"], Path(data["root"]), strict=data["strict"], **options)
    write_manifest(table, Path("data/corpus/manifest.parquet"))
