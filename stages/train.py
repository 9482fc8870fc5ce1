"""Stage `train`: the EnCLAP-style BART captioner on train tokens (+ CLAP), validated on val after every
epoch (loss, and beam-searched captions scored for train.select_by); writes data/model (the selected
epoch, HF save_pretrained layout + tokenizer + the front end needed to caption raw audio; the
train.keep_best best epochs under data/model/epochs/) and dvclive/ curves (val/cider_d per epoch).
--phase NAME: fine-tune data/model on the corpus of finetune.NAME (the paper's Clotho fine-tuning of
its AudioCaps model) -> data/finetune/NAME/model.
The checkpoints folder (DVC `persist`) lets `train.resume: true` continue a killed run.
train.num_processes > 1: the stage runs itself again under `accelerate launch` on that many processes
of this machine (one per GPU, or CPU processes on gloo) and waits: DVC sees one blocking command.
Started by a launcher already (several machines, README "Several GPUs or machines"), it just trains.

The validation scorer comes from clapart_core/scoring and is handed to the training loop: the
captioner does not import scoring/ (later in the figure's order)."""

import logging
import sys
from pathlib import Path
from typing import Any

from clapart_core.captioner import distributed
from clapart_core.captioner.data import load_examples
from clapart_core.captioner.model_dir import write_frontend
from clapart_core.captioner.training import check_crop_grid, layout_kwargs, train_captioner
from clapart_core.captioner.validation import ValScorer
from clapart_core.corpus.manifest import read_manifest
from clapart_core.pipeline.errors import MissingInputError
from clapart_core.pipeline.params import Workspace, resolve_device, run_stage
from clapart_core.pipeline.storage import read_tokens
from clapart_core.scoring.metrics import validation_scorer

GENERATE_KEYS = ("num_beams", "max_length", "no_repeat_ngram_size", "batch_size")


def main(params: dict[str, Any], ws: Workspace) -> None:
    tokens_meta = read_tokens(ws.tokens / "val.parquet").metadata
    # settings that would fail only after an epoch are refused now, in one line (run_stage)
    if "freq_patches" not in tokens_meta:
        raise MissingInputError(f"{ws.tokens / 'val.parquet'} records no freq_patches (made by an older clapart); rerun tokenize (dvc repro)")
    layout_kwargs({**params["model"], "freq_patches": int(tokens_meta["freq_patches"])})  # time layout without a frequency axis
    if ws.init_model is None and params["model"]["token_layout"] == "flat":  # time layout: max_frames counts time steps
        check_crop_grid(params["model"]["max_frames"], int(tokens_meta["freq_patches"]), "params.yaml: model.max_frames")
    score, metric, note = validation_scorer(params["train"]["select_by"])
    num_processes = int(params["train"]["num_processes"])
    if num_processes > 1 and not distributed.launched():
        cpu = resolve_device(str(params["train"]["device"])) == "cpu"
        status = distributed.relaunch("stages.train", sys.argv[1:], num_processes, cpu=cpu)
        if status:
            raise SystemExit(status)  # the ranks have said why
        return
    if not distributed.is_main_process():
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the run's progress, once
    manifest, _ = read_manifest(ws.manifest)
    use_clap = params["model"]["use_clap"]
    splits = {
        split: load_examples(ws.tokens / f"{split}.parquet", manifest, ws.clap_features / f"{split}.h5" if use_clap else None)
        for split in ("train", "val")
    }
    # what the tokens say: their codebook size, and their codes per time step (crops stay on the grid)
    model_params = {**params["model"], "codebook_size": tokens_meta["codebook_size"], "freq_patches": int(tokens_meta["freq_patches"])}
    # a refused resume checkpoint is a one-line CheckpointError: run_stage
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
    if not distributed.is_main_process():
        return  # rank 0 writes data/model
    # decode.max_seconds: how much of a clip the encoders saw, what `clapart caption` reads of a file
    clap_file = ws.clap_features / "train.h5" if use_clap else None
    write_frontend(ws.model, tokens_meta, Path("data/codebooks/rvq.npz"), clap_file, max_seconds=params["decode"]["max_seconds"])


if __name__ == "__main__":
    run_stage("train", main)
