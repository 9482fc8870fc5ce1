"""Stage `corpus`: build data/corpus/manifest.parquet from data.source (generating the demo corpus into data.root first for `demo`).
With --phase NAME: the fine-tuning corpus finetune.NAME.data -> data/finetune/NAME/corpus/."""

from pathlib import Path

from clapart_core.corpus.build import build_manifest
from clapart_core.corpus.download import DatasetDownloadError
from clapart_core.corpus.manifest import ManifestError, write_manifest
from clapart_core.corpus.sources import AAC_DEFAULTS
from clapart_core.pipeline.params import start_stage

if __name__ == "__main__":
    params, ws = start_stage("corpus")
    data, seed = params["data"], params["seed"]
    source = data["source"]
    if source == "demo":
        options = {"n_clips": data["demo"]["n_clips"], "clip_seconds": data["demo"]["clip_seconds"], "seed": seed}
    else:
        options = dict(data.get(source) or {})
    download = {"download": data["download"]} if source in AAC_DEFAULTS else {}
    try:
        table = build_manifest(source, Path(data["root"]), strict=data["strict"], allow_unlisted=data["allow_unlisted"], **download, **options)
    except (ManifestError, DatasetDownloadError, ValueError) as err:
        # a user's corpus mistake: one line naming the file and the problem, not a traceback
        raise SystemExit(f"error: corpus{'' if ws.phase is None else '@' + ws.phase}: {err}") from None
    write_manifest(table, ws.manifest)
