"""Stage `decode`: every manifest clip -> mono int16 PCM at each rate the encoders need, data/audio/sr{rate}/{split}.h5;
every CSV row that does not reach the features (dropped here or by the corpus stage) and every clip kept
altered -> metrics/decode.json (decode.on_error: fail | skip). --phase NAME: the fine-tuning corpus;
--codebook-corpus: the codebook corpus (nothing to do when the corpus stage marked it unused)."""

import json
from typing import Any

from clapart_core.corpus.decoded import DecodeReport, decode_split, merge_corpus_drops
from clapart_core.corpus.manifest import read_manifest
from clapart_core.pipeline import atomic
from clapart_core.pipeline.params import SPLITS, Workspace, codebook_corpus_unused, mark_unused, read_config, run_stage


def main(_params: dict[str, Any], ws: Workspace) -> None:
    if ws.codebook_corpus and codebook_corpus_unused(ws.manifest.parent):
        mark_unused(ws.audio)
        atomic.write_text(ws.metrics / "decode.json", json.dumps({"applies": False, "reason": "codebook_corpus.source is null"}, indent=2) + "\n")
        return
    cfg = read_config("decode")
    # a bad manifest (ManifestError) or, under decode.on_error: fail, a bad clip (ClipDecodeError) is one line: run_stage
    manifest, root = read_manifest(ws.manifest)
    # one list of what was left out: the rows the corpus stage dropped first (under `fail`, an
    # unusable one stops the stage here, before anything is decoded), then this stage's own
    report = merge_corpus_drops(manifest, root, DecodeReport(cfg["on_error"]))
    for split in SPLITS:
        decode_split(manifest, root, split, ws.audio, cfg["sample_rates"], cfg["max_seconds"], cfg["on_error"], report)
    atomic.write_text(ws.metrics / "decode.json", json.dumps(report.to_json(), indent=2) + "\n")


if __name__ == "__main__":
    run_stage("decode", main)
