"""Training resume (issue 6): a run killed with SIGKILL and resumed ends bitwise where the
uninterrupted run ends; a checkpoint of other inputs is ignored; an unsafe one is refused unrun.

The toy run: 10 clips longer than ``max_frames`` (so random crops draw from their generator),
dropout on (so the global RNG matters), 2 epochs x 5 steps, a non-default schedule timescale, a
validation split that is beam-searched and scored after each epoch (selection by the score, the
2 best epochs kept: selection state in the checkpoint, epoch snapshots beside it), dvclive
logging every 2 steps and a mid-epoch checkpoint every 3 steps.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from clapart_core.captioner.data import CaptionExample
from clapart_core.captioner.train_state import CHECKPOINT_NAME, TRAJECTORY_FREE_KEYS, load_checkpoint
from clapart_core.captioner.training import train_captioner
from clapart_core.captioner.validation import ValScorer
from clapart_core.pipeline.checkpoints import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["dog barks", "rain falls", "car passes", "bird sings", "man speaks", "water flows", "door slams", "bell rings"]
MODEL_PARAMS = dict(
    pretrained=None, tokenizer=None, vocab_size=300, codebook_size=8, d_model=32, encoder_layers=1,
    decoder_layers=1, attention_heads=2, ffn_dim=64, dropout=0.1, use_clap=True, max_frames=8,
)
TRAIN_PARAMS = dict(
    epochs=2, batch_size=2, lr=3e-3, warmup_steps=3, timescale=7, weight_decay=0.01, label_smoothing=0.2, grad_clip=1.0,
    mcm_weight=0.7, mcm_prob=0.15, mcm_span=2, device="cpu", bf16=False, num_threads=1, log_every=2,
    select_by="cider_d", keep_best=2, resume=False, checkpoint_every=3,
)
GENERATE = {"num_beams": 2, "max_length": 8, "no_repeat_ngram_size": 3, "batch_size": 2}


def word_overlap(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """A deterministic stand-in for CIDEr-D (the killed child need not start Java): the mean share
    of predicted words found in the clip's references."""
    shares = [len(set(p.split()) & set(" ".join(r).split())) / max(len(p.split()), 1) for p, r in zip(predictions, references, strict=True)]
    return {"cider_d": sum(shares) / len(shares)}
SEED = 5
# which checkpoint write the child dies in: saves happen at steps 3 (mid-epoch), 5 (epoch end), 6, 9, 10
KILL_IN_SAVE = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_examples(n: int, seed: int) -> list[CaptionExample]:
    """Clips whose caption follows from codebook 0; 10..10+n frames, 2 codebooks of 8."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        codes = np.stack([np.full(10 + i, i % 8), rng.integers(0, 8, 10 + i)], axis=1).astype(np.int16)
        out.append(CaptionExample(f"clip{i}", codes, rng.standard_normal(6).astype(np.float32), (f"a {WORDS[i % 8]} loudly",)))
    return out


def run(root: Path, seed: int = SEED, **overrides: Any) -> dict:
    """Train the toy run into ``root/{model,live,ckpt}``; ``overrides`` replace train params."""
    return train_captioner(
        toy_examples(10, 0),
        toy_examples(2, 1),
        model_params=MODEL_PARAMS,
        train_params={**TRAIN_PARAMS, **overrides},
        out_dir=root / "model",
        live_dir=root / "live",
        seed=seed,
        checkpoint_dir=root / "ckpt",
        val_scorer=ValScorer(word_overlap, "cider_d"),
        generate_params=GENERATE,
    )


def val_steps(root: Path) -> list[int]:
    with open(root / "live" / "plots" / "metrics" / "val" / "loss.tsv") as f:
        return [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")]


COMPARED = (
    "steps", "first_step_loss", "final_loss", "final_caption_loss", "final_mcm_loss", "val_losses", "val_history",
    "best_epoch", "best_val_loss", "best_score", "kept_epochs",
)


def weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "model" / "model.safetensors")


def live_files(root: Path) -> dict[str, bytes]:
    """Every dvclive file that records metrics (the curves and the summary)."""
    live = root / "live"
    return {str(p.relative_to(live)): p.read_bytes() for p in sorted(live.rglob("*")) if p.is_file() and p.suffix in (".tsv", ".json")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    return root, run(root)


_CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import test_train_resume as t
from pathlib import Path

real_replace, saves = os.replace, 0

def replace(src, dst, *args, **kwargs):
    # SIGKILL between writing the temp file and renaming it over last.pt: the worst moment
    global saves
    if os.path.basename(dst) == "last.pt":
        saves += 1
        if saves == t.KILL_IN_SAVE:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
t.run(Path({root!r}), resume=True)
"""


def test_sigkilled_run_resumes_to_identical_weights_metrics_and_curves(tmp_path: Path, reference) -> None:
    ref_root, ref = reference
    root = tmp_path / "killed"
    # another hash seed than this process: nothing may depend on set/dict order of strings
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD.format(tests=str(ROOT / "tests"), root=str(root))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (root / "model").exists()
    # the kill hit the second write: its temp file is there, last.pt is still the first checkpoint
    assert [p.name for p in (root / "ckpt").glob("last.pt.partial")]
    ckpt = load_checkpoint(root / "ckpt" / CHECKPOINT_NAME)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 3, 3)
    # the killed run had logged past its checkpoint (train at step 4, val at step 5)
    assert val_steps(root) == [5]

    summary = run(root, resume=True)
    assert summary["resumed_from_step"] == 3
    assert {k: summary[k] for k in COMPARED} == {k: ref[k] for k in COMPARED}
    got, want = weights(root), weights(ref_root)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert live_files(root) == live_files(ref_root)
    assert "val/cider_d.tsv" in {Path(k).relative_to("plots/metrics").as_posix() for k in live_files(root) if k.startswith("plots")}
    # the kept epochs (both, with keep_best 2) are the same weights as the uninterrupted run's
    assert sorted(p.name for p in (root / "model" / "epochs").iterdir()) == ["epoch_1", "epoch_2"]
    for epoch in ("epoch_1", "epoch_2"):
        assert (root / "model/epochs" / epoch / "model.safetensors").read_bytes() == (ref_root / "model/epochs" / epoch / "model.safetensors").read_bytes()
    assert not list((root / "ckpt").glob("last.pt.partial")), "stale temp files are cleaned up"


def test_finished_run_extended_by_raising_epochs(tmp_path: Path, reference) -> None:
    """epochs is not in the fingerprint: 1 epoch, then resume with epochs=2 == 2 epochs straight."""
    ref_root, ref = reference
    one = run(tmp_path, epochs=1)
    assert one["steps"] == 5 and load_checkpoint(tmp_path / "ckpt" / CHECKPOINT_NAME)["epoch"] == 1
    two = run(tmp_path, epochs=2, resume=True)
    assert two["resumed_from_step"] == 5
    assert two["val_losses"] == ref["val_losses"] and two["first_step_loss"] == ref["first_step_loss"]
    got, want = weights(tmp_path), weights(ref_root)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_checkpoint_of_other_inputs_is_ignored_with_one_log_line(tmp_path: Path, caplog, reference) -> None:
    run(tmp_path, epochs=1)
    with caplog.at_level(logging.INFO, logger="clapart_core.captioner.training"):
        summary = run(tmp_path, epochs=1, resume=True, lr=1e-3)
    assert summary["resumed_from_step"] == 0
    lines = [r.getMessage() for r in caplog.records if "train.resume" in r.getMessage()]
    assert len(lines) == 1 and "different inputs (params differ); training from scratch" in lines[0], lines
    # the fresh run's checkpoint replaced the old one: the same change now resumes
    caplog.clear()
    assert run(tmp_path, epochs=1, resume=True, lr=1e-3)["resumed_from_step"] == 5
    # another seed
    with caplog.at_level(logging.INFO, logger="clapart_core.captioner.training"):
        assert run(tmp_path, seed=SEED + 1, epochs=1, resume=True, lr=1e-3)["resumed_from_step"] == 0
    assert any("(seed differ)" in r.getMessage() for r in caplog.records)
    # fewer epochs than the checkpoint has done (the reference's, at step 10): starts fresh
    caplog.clear()
    shutil.rmtree(tmp_path / "ckpt")
    shutil.copytree(reference[0] / "ckpt", tmp_path / "ckpt")
    with caplog.at_level(logging.INFO, logger="clapart_core.captioner.training"):
        assert run(tmp_path, epochs=1, resume=True)["resumed_from_step"] == 0
    assert any("is at step 10, past this run's 5 steps" in r.getMessage() for r in caplog.records)


def test_no_checkpoint_with_resume_starts_fresh(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="clapart_core.captioner.training"):
        assert run(tmp_path, epochs=1, resume=True)["resumed_from_step"] == 0
    assert any("no checkpoint at" in r.getMessage() for r in caplog.records)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def test_crafted_pickle_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    """resume: true + a checkpoint that would run code -> a clear error (not a silent fresh
    start: the file is not one this code wrote, so someone should look at it); the payload never
    runs. resume: false never reads the file and overwrites it."""
    marker = tmp_path / "pwned"
    (tmp_path / "ckpt").mkdir()
    torch.save({"fingerprint": {}, "model": _Payload(str(marker))}, tmp_path / "ckpt" / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match=r"refused by torch.load\(weights_only=True\): it would call .*open"):
        run(tmp_path, epochs=1, resume=True)
    assert not marker.exists()

    (tmp_path / "ckpt" / CHECKPOINT_NAME).write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        run(tmp_path, epochs=1, resume=True)
    torch.save({"model": {}}, tmp_path / "ckpt" / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="not a clapart training checkpoint"):
        run(tmp_path, epochs=1, resume=True)

    torch.save({"model": _Payload(str(marker))}, tmp_path / "ckpt" / CHECKPOINT_NAME)
    assert run(tmp_path, epochs=1, resume=False)["resumed_from_step"] == 0
    assert not marker.exists()
    assert load_checkpoint(tmp_path / "ckpt" / CHECKPOINT_NAME)["step"] == 5


def test_checkpoint_loads_with_weights_only_and_holds_the_full_state(tmp_path: Path) -> None:
    run(tmp_path, epochs=1)
    state = torch.load(tmp_path / "ckpt" / CHECKPOINT_NAME, weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "fingerprint", "val_history", "window", "step"} <= set(state)
    assert "best_state" not in state, "kept epochs are snapshots beside last.pt, not weights inside it"
    assert set(state["rng"]) == {"torch", "shuffle", "crop", "mcm"}
    assert set(state["fingerprint"]) >= {"params", "selection", "seed", "train_data", "val_data", "tokenizer", "code"}
    # the selection state: the epoch's validation loss and score, and its snapshot on disk
    assert [sorted(r) for r in state["val_history"]] == [["cider_d", "epoch", "loss", "step"]]
    assert (tmp_path / "ckpt" / "epochs" / "epoch_1" / "model.safetensors").is_file()
    assert state["scheduler"]["base_lrs"] == [TRAIN_PARAMS["lr"]] * 2  # two AdamW groups (decay / no decay)


def test_resume_without_the_kept_epoch_snapshots_starts_fresh(tmp_path: Path, caplog) -> None:
    run(tmp_path, epochs=1)
    shutil.rmtree(tmp_path / "ckpt" / "epochs" / "epoch_1")
    with caplog.at_level(logging.INFO, logger="clapart_core.captioner.training"):
        assert run(tmp_path, epochs=2, resume=True)["resumed_from_step"] == 0
    assert any("the weights of kept epoch(s) 1 are missing" in r.getMessage() for r in caplog.records)


def test_dvc_yaml_lists_every_train_key_that_changes_the_result() -> None:
    """resume / checkpoint_every must not rerun train; every other train.* key must."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["train"]["resume"] is False
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    listed = {p.removeprefix("train.") for p in stage["params"] if isinstance(p, str) and p.startswith("train.")}
    assert listed == set(params["train"]) - {"resume", "checkpoint_every"}
    assert {"resume", "checkpoint_every"} <= TRAJECTORY_FREE_KEYS
    # the checkpoint folder is no DVC output: one (uncached) that differs from dvc.lock after a resumed
    # run, or is missing in a `dvc exp run --queue` copy, reruns train with nothing changed
    for name in ("train", "finetune"):
        outs = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
        outs = outs.get("do", outs)["outs"]
        assert not any("checkpoints" in (next(iter(o)) if isinstance(o, dict) else o) for o in outs), name
    assert "/data/checkpoints" in (ROOT / ".gitignore").read_text().split()


def test_dvclive_outputs_persist_so_a_resumed_stage_keeps_its_curves() -> None:
    """DVC deletes a stage's outputs before running it unless they persist: without it, `dvc repro`
    with train.resume continued the weights but lost every curve logged before the kill (the
    library resumes the curves, test above, only if the files are still there). A fresh run clears
    them itself (dvclive's Live(resume=False)), so persisting cannot keep stale rows."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("train", "finetune"):
        stage = stages[name].get("do", stages[name])
        live = [o for o in stage["outs"] + stage.get("plots", []) if isinstance(o, dict) and next(iter(o)).startswith("dvclive/")]
        assert len(live) == 2, name  # metrics.json and the plots folder
        for out in live:
            assert next(iter(out.values())) == {**next(iter(out.values())), "persist": True, "cache": False}, (name, out)


def _stage_project(root: Path, **train: Any) -> dict:
    """A minimal project for `python -m stages.train`: manifest, BEATs-type tokens, params.yaml (demo, tiny model)."""
    import pyarrow as pa

    from clapart_core.corpus.manifest import MANIFEST_SCHEMA, ROOT_KEY, write_manifest
    from clapart_core.encoders.registry import token_metadata, token_type
    from clapart_core.pipeline.storage import write_tokens

    examples = {"train": toy_examples(4, 0), "val": toy_examples(2, 1)}
    rows = [(ex.clip_id if s == "train" else f"v{ex.clip_id}", s, ex.captions) for s, exs in examples.items() for ex in exs]
    table = pa.table(
        {"clip_id": [r[0] for r in rows], "split": [r[1] for r in rows], "audio_path": [f"{r[0]}.wav" for r in rows],
         "captions": [list(r[2]) for r in rows], "duration_s": [1.0] * len(rows)},
        schema=MANIFEST_SCHEMA,
    ).replace_schema_metadata({ROOT_KEY: b"corpus"})
    write_manifest(table, root / "data/corpus/manifest.parquet")
    meta = token_metadata(token_type("beats_rvq"), 2, 8, {})
    for split, exs in examples.items():
        prefix = "" if split == "train" else "v"
        write_tokens(root / f"data/tokens/{split}.parquet", ((prefix + ex.clip_id, ex.codes) for ex in exs), meta)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update({k: MODEL_PARAMS[k] for k in ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim")}, use_clap=False)
    params["train"].update(epochs=1, batch_size=2, num_threads=1, **train)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def _run_stage(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "stages.train"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_train_stage_refuses_crafted_checkpoint_in_one_line(tmp_path: Path) -> None:
    """`python -m stages.train` in a minimal project with train.resume: true and a malicious
    last.pt exits with one `error: ... (stage train)` line and exit code 2, and the payload does not run."""
    _stage_project(tmp_path, resume=True)
    marker = tmp_path / "pwned"
    (tmp_path / "data/checkpoints/train").mkdir(parents=True)
    torch.save({"fingerprint": {}, "model": _Payload(str(marker))}, tmp_path / "data/checkpoints/train" / CHECKPOINT_NAME)

    proc = _run_stage(tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training checkpoint data/checkpoints/train/last.pt was refused"), proc.stderr[-2000:]
    assert last.endswith("(stage train)"), last
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_train_stage_refuses_max_frames_off_the_beats_grid_before_training(tmp_path: Path) -> None:
    """BEATs tokens (freq_patches 8 in their metadata) and model.max_frames 1020: one line, nothing trained."""
    params = _stage_project(tmp_path)
    params["model"]["max_frames"] = 1020
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _run_stage(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: params.yaml: model.max_frames=1020 is not a multiple of 8, the tokens' codes per time step "
        "(frequency patches), so crops would break their time-frequency grid; use 1016 (stage train)"
    )
    assert not (tmp_path / "data/model").exists() and not (tmp_path / "data/checkpoints").exists()
