"""Stage `corpus`: build data/corpus/manifest.parquet from data.source (generating the demo corpus into data.root first for `demo`)."""

from pathlib import Path

from clapart_core.datasets import ManifestError, build_manifest, write_manifest
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
    try:  # a bad CSV row (e.g. a path escaping data.root) is a one-line error naming file and line
        table = build_manifest(source, Path(data["root"]), strict=data["strict"], **download, **options)
    except ManifestError as err:
        raise SystemExit(f"error: corpus: {err}") from None
    write_manifest(table, Path("data/corpus/manifest.parquet"))
