"""Stage `train`: the EnCLAP-style BART captioner on train tokens (+ CLAP), validated on val;
writes data/model (HF save_pretrained layout + tokenizer + the front end needed to caption raw audio)
and dvclive/ curves. data/checkpoints/train/last.pt (DVC `persist`) lets `train.resume: true` continue."""

from pathlib import Path

from clapart_core.beats import CheckpointError
from clapart_core.caption_data import load_examples
from clapart_core.datasets import read_manifest
from clapart_core.inference import write_frontend
from clapart_core.params import start_stage
from clapart_core.storage import read_tokens
from clapart_core.training import train_captioner

if __name__ == "__main__":
    params = start_stage("train")
    manifest, _ = read_manifest(Path("data/corpus/manifest.parquet"))
    use_clap = params["model"]["use_clap"]
    splits = {
        split: load_examples(Path(f"data/tokens/{split}.parquet"), manifest, Path(f"data/features/clap/{split}.h5") if use_clap else None)
        for split in ("train", "val")
    }
    tokens_meta = read_tokens(Path("data/tokens/val.parquet")).metadata
    model_params = {**params["model"], "codebook_size": tokens_meta["codebook_size"]}
    out = Path("data/model")
    try:
        train_captioner(splits["train"], splits["val"], model_params=model_params, train_params=params["train"], out_dir=out, live_dir=Path("dvclive"), seed=params["seed"], checkpoint_dir=Path("data/checkpoints/train"))
    except CheckpointError as err:
        raise SystemExit(f"error: train: {err}") from None
    write_frontend(out, tokens_meta, Path("data/codebooks/rvq.npz"), Path("data/features/clap/train.h5") if use_clap else None)
