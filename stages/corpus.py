"""Stage `corpus`: build data/corpus/manifest.parquet (generating the demo corpus first for data.source=demo)."""

from pathlib import Path

from clapart_core.datasets import build_manifest, write_manifest
from clapart_core.demo_corpus import generate_demo_corpus
from clapart_core.params import start_stage

OUT = Path("data/corpus")

if __name__ == "__main__":
    params = start_stage("corpus")
    data, root = params["data"], Path(params["data"]["root"])
    OUT.mkdir(parents=True, exist_ok=True)
    if data["source"] == "demo":
        generate_demo_corpus(root, n_clips=data["demo"]["n_clips"], clip_seconds=data["demo"]["clip_seconds"], seed=params["seed"])
    write_manifest(build_manifest(data["source"], root, strict=data["strict"]), OUT / "manifest.parquet")
