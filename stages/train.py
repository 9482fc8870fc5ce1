"""Stage `train`: the EnCLAP-style BART captioner on train tokens (+ CLAP), validated on val;
writes data/model (HF save_pretrained layout + tokenizer + the front end needed to caption raw audio)
and dvclive/ curves. --phase NAME: fine-tune data/model on the corpus of finetune.NAME
(the paper's Clotho fine-tuning of its AudioCaps model) -> data/finetune/NAME/model.
The checkpoints folder (DVC `persist`) lets `train.resume: true` continue a killed run."""

from pathlib import Path
from typing import Any

from clapart_core.captioner.data import load_examples
from clapart_core.captioner.model_dir import write_frontend
from clapart_core.captioner.training import train_captioner
from clapart_core.corpus.manifest import read_manifest
from clapart_core.pipeline.params import Workspace, run_stage
from clapart_core.pipeline.storage import read_tokens


def main(params: dict[str, Any], ws: Workspace) -> None:
    manifest, _ = read_manifest(ws.manifest)
    use_clap = params["model"]["use_clap"]
    splits = {
        split: load_examples(ws.tokens / f"{split}.parquet", manifest, ws.clap_features / f"{split}.h5" if use_clap else None)
        for split in ("train", "val")
    }
    tokens_meta = read_tokens(ws.tokens / "val.parquet").metadata
    model_params = {**params["model"], "codebook_size": tokens_meta["codebook_size"]}
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
    )
    # decode.max_seconds: how much of a clip the encoders saw, what `clapart caption` reads of a file
    clap_file = ws.clap_features / "train.h5" if use_clap else None
    write_frontend(ws.model, tokens_meta, Path("data/codebooks/rvq.npz"), clap_file, max_seconds=params["decode"]["max_seconds"])


if __name__ == "__main__":
    run_stage("train", main)
