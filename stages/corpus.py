"""Stage `corpus`: build data/corpus/manifest.parquet from data.source (generating the demo corpus into data.root first for `demo`).
With --phase NAME: the fine-tuning corpus finetune.NAME.data -> data/finetune/NAME/corpus/.
With --codebook-corpus: the corpus params codebook_corpus names (data overlaid by it) -> data/codebook_corpus/corpus/,
or, when codebook_corpus.source is null, only a marker saying there is none."""

from pathlib import Path
from typing import Any

from clapart_core.corpus.build import build_manifest
from clapart_core.corpus.manifest import write_manifest
from clapart_core.corpus.sources import AAC_DEFAULTS
from clapart_core.pipeline.params import Workspace, mark_unused, run_stage


def main(params: dict[str, Any], ws: Workspace) -> None:
    if ws.codebook_corpus and params["codebook_corpus"]["source"] is None:
        mark_unused(ws.manifest.parent)  # the codebooks are fitted on the training split: nothing to build
        return
    data, seed = params["data"], params["seed"]
    source = data["source"]
    if source == "demo":
        options = {"n_clips": data["demo"]["n_clips"], "clip_seconds": data["demo"]["clip_seconds"], "seed": seed}
    else:
        options = dict(data.get(source) or {})
    download = {"download": data["download"]} if source in AAC_DEFAULTS else {}
    # a corpus mistake (ManifestError, DatasetDownloadError) is one line, not a traceback: run_stage
    table = build_manifest(source, Path(data["root"]), strict=data["strict"], allow_unlisted=data["allow_unlisted"], **download, **options)
    write_manifest(table, ws.manifest)


if __name__ == "__main__":
    run_stage("corpus", main)
