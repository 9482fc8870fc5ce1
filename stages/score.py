"""Stage `score`: beam-search captions (params `generate`) for the test split -> data/predictions/{test.csv, test_per_clip.csv},
clips named by their file_name as the corpus's caption CSV writes it (corpus/manifest.py file_names), so
`clapart evaluate --predictions data/predictions/test.csv --references <the corpus's test CSV>` matches them;
DCASE metrics (aac-metrics) -> metrics/scores.json (numbers: the DVC metric); what they are about (clip count,
token type, what was pretrained, the constant-caption baseline, reasons for unavailable metrics) -> metrics/scores_notes.json.
--phase NAME: the fine-tuned model on its corpus's test split -> metrics/finetune/NAME/scores.json."""

import csv
from typing import Any

import pyarrow.compute as pc

from clapart_core.captioner.data import load_examples
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model_dir import load_captioner, read_frontend, read_summary
from clapart_core.corpus.manifest import file_names, read_manifest
from clapart_core.pipeline.atomic import atomic_path
from clapart_core.pipeline.params import Workspace, run_stage
from clapart_core.pipeline.storage import read_tokens
from clapart_core.scoring.metrics import constant_caption_baseline, score_with_details, write_per_clip_csv, write_scores


def main(params: dict[str, Any], ws: Workspace) -> None:
    manifest, _ = read_manifest(ws.manifest)
    model, tokenizer = load_captioner(ws.model)
    tokens = ws.tokens / "test.parquet"
    test = load_examples(tokens, manifest, ws.clap_features / "test.h5" if model.config.use_clap else None)
    gen = params["generate"]
    predictions = caption_examples(
        model,
        tokenizer,
        test,
        num_beams=gen["num_beams"],
        max_length=gen["max_length"],
        no_repeat_ngram_size=gen["no_repeat_ngram_size"],
        batch_size=gen["batch_size"],
    )
    out = ws.predictions
    names = file_names(manifest)
    ids = [names[ex.clip_id] for ex in test]
    with atomic_path(out / "test.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "caption_predicted"])
        writer.writerows(zip(ids, predictions, strict=True))
    references = [list(ex.captions) for ex in test]
    scores, per_clip = score_with_details(predictions, references, ids)
    write_per_clip_csv(per_clip, out / "test_per_clip.csv")
    train_captions = manifest.filter(pc.equal(manifest["split"], "train")).column("captions").to_pylist()
    baseline_caption, baseline_cider = constant_caption_baseline(train_captions, references)
    encoder, frontend = read_tokens(tokens).metadata["encoder"], read_frontend(ws.model)
    write_scores(
        scores,
        ws.metrics / "scores.json",
        n_clips=len(test),
        encoder_type=frontend["encoder_type"],
        encoder_pretrained=bool(encoder["pretrained"]),
        clap_pretrained=bool(frontend["clap"] and frontend["clap"]["pretrained"]),
        bart_pretrained=bool(read_summary(ws.model)["pretrained"]),
        baseline_cider_d=baseline_cider,
        baseline_caption=baseline_caption,
    )


if __name__ == "__main__":
    run_stage("score", main)
