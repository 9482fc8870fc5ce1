"""Stage `score`: beam-search captions (params `generate`) for the test split -> data/predictions/{test.csv, test_per_clip.csv},
clips named by their file_name as the corpus's caption CSV writes it (corpus/manifest.py file_names), so
`clapart evaluate --predictions data/predictions/test.csv --references <the corpus's test CSV>` matches them;
DCASE metrics (aac-metrics) -> metrics/scores.json (numbers: the DVC metric); what they are about (clip count,
token type, what was pretrained, the constant-caption baseline, the selected epoch, reasons for unavailable
metrics) -> metrics/scores_notes.json. Each epoch train.keep_best kept (data/model/epochs/epoch_K) is scored
the same way -> data/predictions/epochs/epoch_K.csv and metrics/scores_epochs.json (with the selected one's
and every kept one's validation and test scores; `clapart results` shows them as rows).
generate.rerank clap | hybrid: generate.candidates captions per clip (generate.sampling), reranked with the
captioner's log-likelihood and the CLAP model that wrote data/features/clap/test.h5 (rebuilt from its spec, its
fingerprint checked), every candidate with its scores -> data/predictions/test_candidates.csv (and
epochs/epoch_K_candidates.csv); the chosen caption is the prediction (clapart_core/captioner/rerank.py).
--phase NAME: the fine-tuned model on its corpus's test split -> metrics/finetune/NAME/scores.json."""

import csv
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from clapart_core.captioner.data import load_examples
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model_dir import kept_epoch_dirs, load_captioner, read_frontend, read_summary
from clapart_core.captioner.rerank import RerankSettings, rerank_examples, write_candidates
from clapart_core.corpus.manifest import file_names, read_manifest
from clapart_core.pipeline.atomic import atomic_path
from clapart_core.pipeline.params import Workspace, run_stage
from clapart_core.pipeline.storage import read_tokens
from clapart_core.scoring.metrics import (
    constant_caption_baseline,
    epochs_path,
    score,
    score_with_details,
    write_epoch_scores,
    write_per_clip_csv,
    write_scores,
)


def write_predictions(path: Path, file_names: list[str], predictions: list[str]) -> None:
    """``file_name,caption_predicted`` rows, clips named as the corpus's caption CSV names them."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "caption_predicted"])
        writer.writerows(zip(file_names, predictions, strict=True))


class Captioner:
    """The test split's captions from a model directory: plain beam search (``generate.rerank: none``,
    the paper), or candidates reranked, written beside the predictions."""

    def __init__(self, params: dict[str, Any], clap_file: Path) -> None:
        self.gen = {k: params["generate"][k] for k in ("num_beams", "max_length", "no_repeat_ngram_size", "batch_size")}
        self.rerank = RerankSettings.from_params(params["generate"], params["seed"])
        self.clap = None
        if self.rerank.uses_clap:
            from clapart_core.encoders.clap import clap_of_embeddings

            self.clap = clap_of_embeddings(clap_file)

    @property
    def notes(self) -> dict[str, Any]:
        """What the scores' notes record of the decoding."""
        if self.rerank.mode == "none":
            return {"rerank": "none"}
        r = self.rerank
        return {
            "rerank": r.mode, "candidates": r.candidates, "sampling": r.sampling, "temperature": r.temperature, "top_p": r.top_p,
            "rerank_weight": r.weight, "seed": r.seed, "clap_text_tokenizer": self.clap.text_tokenizer_name if self.clap else None,
        }

    def __call__(self, model: Any, tokenizer: Any, test: list[Any], ids: list[str], candidates_file: Path) -> list[str]:
        if self.rerank.mode == "none":
            return caption_examples(model, tokenizer, test, **self.gen)
        clips = rerank_examples(
            model, tokenizer, test, self.rerank,
            audio_embeddings=[ex.clap for ex in test] if self.clap else None,
            embed_text=self.clap.embed_text if self.clap else None,
            **{k: v for k, v in self.gen.items() if k != "batch_size"},
        )
        write_candidates(candidates_file, ids, clips)
        return [c.caption for c in clips]


def main(params: dict[str, Any], ws: Workspace) -> None:
    manifest, _ = read_manifest(ws.manifest)
    model, tokenizer = load_captioner(ws.model)
    tokens = ws.tokens / "test.parquet"
    clap_file = ws.clap_features / "test.h5"
    captioner = Captioner(params, clap_file)
    # reranking by CLAP reads the clip embeddings whether or not the captioner has a CLAP slot
    test = load_examples(tokens, manifest, clap_file if model.config.use_clap or captioner.clap else None)
    out = ws.predictions
    names = file_names(manifest)
    ids = [names[ex.clip_id] for ex in test]
    predictions = captioner(model, tokenizer, test, ids, out / "test_candidates.csv")
    write_predictions(out / "test.csv", ids, predictions)
    references = [list(ex.captions) for ex in test]
    scores, per_clip = score_with_details(predictions, references, ids)
    write_per_clip_csv(per_clip, out / "test_per_clip.csv")
    train_captions = manifest.filter(pc.equal(manifest["split"], "train")).column("captions").to_pylist()
    baseline_caption, baseline_cider = constant_caption_baseline(train_captions, references)
    encoder, frontend, summary = read_tokens(tokens).metadata["encoder"], read_frontend(ws.model), read_summary(ws.model)
    write_scores(
        scores,
        ws.metrics / "scores.json",
        n_clips=len(test),
        encoder_type=frontend["encoder_type"],
        encoder_pretrained=bool(encoder["pretrained"]),
        clap_pretrained=bool(frontend["clap"] and frontend["clap"]["pretrained"]),
        bart_pretrained=bool(summary["pretrained"]),
        baseline_cider_d=baseline_cider,
        baseline_caption=baseline_caption,
        epoch=summary["best_epoch"],
        selected_by=summary.get("selected_by"),
        decoding=captioner.notes,
    )

    # the other epochs train.keep_best kept: same test split, same beam search, same metrics
    test_scores = {summary["best_epoch"]: scores}
    for epoch, folder in kept_epoch_dirs(ws.model).items():
        if epoch not in test_scores:
            kept_model, kept_tokenizer = load_captioner(folder)
            kept_predictions = captioner(kept_model, kept_tokenizer, test, ids, out / "epochs" / f"epoch_{epoch}_candidates.csv")
            write_predictions(out / "epochs" / f"epoch_{epoch}.csv", ids, kept_predictions)
            test_scores[epoch] = score(kept_predictions, references)
    write_epoch_scores(epochs_path(ws.metrics / "scores.json"), summary, test_scores)


if __name__ == "__main__":
    run_stage("score", main)
