"""Stage `train`: the EnCLAP-style BART captioner on train tokens (+ CLAP), validated on val after every
epoch (loss, and beam-searched captions scored for train.select_by); writes data/model (the selected
epoch, HF save_pretrained layout + tokenizer + the front end needed to caption raw audio; the
train.keep_best best epochs under data/model/epochs/) and dvclive/ curves (val/cider_d per epoch).
--phase NAME: fine-tune data/model on the corpus of finetune.NAME (the paper's Clotho fine-tuning of
its AudioCaps model) -> data/finetune/NAME/model.
The checkpoints folder (DVC `persist`) lets `train.resume: true` continue a killed run.

The validation scorer comes from clapart_core/scoring and is handed to the training loop: the
captioner does not import scoring/ (later in the figure's order)."""

from pathlib import Path

from clapart_core.captioner.data import load_examples
from clapart_core.captioner.model_dir import write_frontend
from clapart_core.captioner.training import CropGridError, check_crop_grid, train_captioner
from clapart_core.captioner.validation import SELECT_BY, ValScorer
from clapart_core.corpus.manifest import read_manifest
from clapart_core.pipeline.checkpoints import CheckpointError
from clapart_core.pipeline.params import start_stage
from clapart_core.pipeline.storage import read_tokens
from clapart_core.scoring.metrics import ScoringSetupError, validation_scorer

GENERATE_KEYS = ("num_beams", "max_length", "no_repeat_ngram_size", "batch_size")

if __name__ == "__main__":
    params, ws = start_stage("train")
    name = "train" if ws.phase is None else f"train@{ws.phase}"
    tokens_meta = read_tokens(ws.tokens / "val.parquet").metadata
    select_by = params["train"]["select_by"]
    try:  # settings that would fail only after an epoch are refused now, in one line
        if "freq_patches" not in tokens_meta:
            raise ValueError(f"{ws.tokens / 'val.parquet'} records no freq_patches (made by an older clapart); rerun tokenize (dvc repro)")
        if select_by not in SELECT_BY:
            raise ValueError(f"params.yaml: train.select_by = {select_by!r} is not one of {', '.join(SELECT_BY)}")
        if ws.init_model is None:
            check_crop_grid(params["model"]["max_frames"], int(tokens_meta["freq_patches"]), "params.yaml: model.max_frames")
        score, metric, note = validation_scorer(select_by)
    except (ValueError, ScoringSetupError) as err:
        raise SystemExit(f"error: {name}: {err}") from None
    manifest, _ = read_manifest(ws.manifest)
    use_clap = params["model"]["use_clap"]
    splits = {
        split: load_examples(ws.tokens / f"{split}.parquet", manifest, ws.clap_features / f"{split}.h5" if use_clap else None)
        for split in ("train", "val")
    }
    # what the tokens say: their codebook size, and their codes per time step (crops stay on the grid)
    model_params = {**params["model"], "codebook_size": tokens_meta["codebook_size"], "freq_patches": int(tokens_meta["freq_patches"])}
    try:
        train_captioner(
            splits["train"],
            splits["val"],
            model_params=model_params,
            train_params=params["train"],
            out_dir=ws.model,
            live_dir=ws.live,
            seed=params["seed"],
            checkpoint_dir=ws.checkpoints,
            init_from=ws.init_model,
            val_scorer=ValScorer(score, metric, note),
            generate_params={k: params["generate"][k] for k in GENERATE_KEYS},
        )
    except (CheckpointError, CropGridError) as err:
        raise SystemExit(f"error: {name}: {err}") from None
    write_frontend(ws.model, tokens_meta, Path("data/codebooks/rvq.npz"), ws.clap_features / "train.h5" if use_clap else None)
