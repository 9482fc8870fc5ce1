"""Training on 2 processes (issue 14): CPU processes on gloo under `accelerate launch`.

The toy run of ``test_train_resume`` (10 clips, batch 2, 2 epochs x 5 steps, validation scored
after each epoch, a checkpoint every 3 steps) on 2 processes:

* without dropout it ends where the 1-process run ends up to float rounding: the global batch,
  the crops, the MCM masks and the loss normalisation are the same; only the order of float
  additions differs (each rank's share is summed, then the shares). Batch 3 over 2 ranks makes
  shares of 2 and 1 rows (and, in the epoch's last batch of 1 row, an empty one), and
  ``micro_batch_size: 1`` makes rank 0 accumulate its 2 rows: all three paths are in the run;
* with dropout, killed by SIGKILL in its second checkpoint write and resumed on 2 processes it
  ends bitwise where the uninterrupted 2-process run ends (each rank's dropout stream is in the
  checkpoint); resumed on 1 process instead (N -> M) it finishes from the same step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from clapart_core.captioner import distributed
from clapart_core.captioner.train_state import CHECKPOINT_NAME, load_checkpoint
from clapart_core.captioner.training import train_captioner
from clapart_core.captioner.validation import ValScorer
from clapart_core.pipeline.errors import ParamsError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_train_resume as toy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: 2 processes vs 1 without dropout: float rounding only (measured max abs difference 3.9e-7 of
#: weights ~0.1; AdamW's normalised steps keep rounding from growing over 10 steps)
WEIGHT_ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def run(root: Path, model: dict[str, Any] | None = None, **train: Any) -> dict:
    """The toy run into ``root/{model,live,ckpt}``; ``model`` / ``train`` override its params."""
    return train_captioner(
        toy.toy_examples(10, 0),
        toy.toy_examples(2, 1),
        model_params={**toy.MODEL_PARAMS, **(model or {})},
        train_params={**toy.TRAIN_PARAMS, **train},
        out_dir=root / "model",
        live_dir=root / "live",
        seed=toy.SEED,
        checkpoint_dir=root / "ckpt",
        val_scorer=ValScorer(toy.word_overlap, "cider_d"),
        generate_params=toy.GENERATE,
    )


_CHILD = """
import json, os, signal, sys
from pathlib import Path
import test_distributed as t

root, model, train, kill_in_save = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
if kill_in_save and os.environ["RANK"] == "0":
    real_replace, saves = os.replace, 0

    def replace(src, dst, *args, **kwargs):
        # SIGKILL rank 0 between writing the temp file and renaming it over last.pt
        global saves
        if os.path.basename(dst) == "last.pt":
            saves += 1
            if saves == kill_in_save:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
t.run(root, model, **train)
"""


def launch(tmp: Path, root: Path, model: dict | None = None, kill_in_save: int = 0, **train: Any) -> subprocess.CompletedProcess:
    """The toy run on 2 CPU processes: the `accelerate launch` line :func:`distributed.launch_command` builds."""
    child = tmp / "ddp_child.py"
    child.write_text(_CHILD)
    argv, env = distributed.launch_command(
        ["ddp_child", str(root), json.dumps(model or {}), json.dumps({"num_processes": 2, **train}), str(kill_in_save)],
        num_processes=2, main_process_port=distributed.free_port(), cpu=True,
    )
    argv = [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]]
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(tmp)])}
    return subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "model" / "model.safetensors")


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_rank_shares_cover_each_batch_once() -> None:
    for n in (1, 2, 3, 7, 32):
        for world in (1, 2, 3, 4):
            shares = [distributed.Dist(rank, world).rows(n) for rank in range(world)]
            assert [i for s in shares for i in range(n)[s]] == list(range(n))
            assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


def test_launch_command_for_several_machines() -> None:
    argv, env = distributed.launch_command(
        ["stages.train"], num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29400
    )
    assert distributed.format_command(argv, env) == (
        "accelerate launch --multi_gpu --num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.1 "
        "--main_process_port 29400 --mixed_precision no --dynamo_backend no -m stages.train"
    )
    with pytest.raises(ParamsError, match="do not split evenly"):
        distributed.launch_command(["stages.train"], num_processes=3, num_machines=2, main_process_ip="h")
    with pytest.raises(ParamsError, match="address of machine 0"):
        distributed.launch_command(["stages.train"], num_processes=4, num_machines=2)


def test_process_count_must_match_the_launch() -> None:
    """A single process asked to be one of 2 says so in one line (it was not launched)."""
    with pytest.raises(ParamsError, match=r"train.num_processes=2 but this job was launched with 1 processes"):
        run(Path("/nonexistent"), num_processes=2)


def test_two_processes_match_one_process_up_to_rounding(tmp_path: Path) -> None:
    """No dropout: the 2-process run is the 1-process run but for the order of float additions."""
    no_dropout = {"dropout": 0.0}
    one = run(tmp_path / "one", no_dropout, batch_size=3)
    proc = launch(tmp_path, tmp_path / "two", no_dropout, batch_size=3, micro_batch_size=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two/model/training_summary.json").read_text())
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["steps"] == one["steps"] == 8  # 2 epochs of batches of 3, 3, 3 and 1 pairs
    assert two["first_step_loss"] == pytest.approx(one["first_step_loss"], rel=1e-5)
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-5)
    # validation: the same batches, gathered without duplicates; the same epochs selected
    assert [r["loss"] for r in two["val_history"]] == pytest.approx([r["loss"] for r in one["val_history"]], rel=1e-5)
    assert [r["cider_d"] for r in two["val_history"]] == [r["cider_d"] for r in one["val_history"]]
    assert two["kept_epochs"] == one["kept_epochs"]
    diff = max_abs_diff(weights(tmp_path / "two"), weights(tmp_path / "one"))
    print(f"max abs weight difference, 2 processes vs 1: {diff:.3g}")
    assert diff < WEIGHT_ATOL, diff
    # rank 0 alone wrote: one dvclive folder whose curves have one row per logged step
    rows = (tmp_path / "two/live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["2", "4", "6", "8"]


def test_killed_two_process_run_resumes_on_two_and_on_one_process(tmp_path: Path) -> None:
    """Dropout on: SIGKILL in rank 0's second checkpoint write, resume on 2 processes -> bitwise
    the uninterrupted 2-process run; the same checkpoint resumed on 1 process finishes too."""
    reference = launch(tmp_path, tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = launch(tmp_path, tmp_path / "killed", kill_in_save=2)
    assert killed.returncode != 0 and not (tmp_path / "killed/model").exists()
    ckpt = load_checkpoint(tmp_path / "killed/ckpt" / CHECKPOINT_NAME)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 3, 3)
    assert len(ckpt["rng"]["ranks"]) == 2 and not torch.equal(ckpt["rng"]["ranks"][0]["torch"], ckpt["rng"]["ranks"][1]["torch"])
    # N -> M: a copy of the killed run's folder resumed by one process
    subprocess.run(["cp", "-a", str(tmp_path / "killed"), str(tmp_path / "on_one")], check=True)

    resumed = launch(tmp_path, tmp_path / "killed", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "killed/model/training_summary.json").read_text())
    ref = json.loads((tmp_path / "ref/model/training_summary.json").read_text())
    assert summary["resumed_from_step"] == 3
    assert {k: summary[k] for k in toy.COMPARED} == {k: ref[k] for k in toy.COMPARED}
    got, want = weights(tmp_path / "killed"), weights(tmp_path / "ref")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert toy.live_files(tmp_path / "killed") == toy.live_files(tmp_path / "ref")

    on_one = run(tmp_path / "on_one", resume=True)
    assert on_one["resumed_from_step"] == 3 and on_one["steps"] == 10 and on_one["num_processes"] == 1


def test_train_stage_launches_itself_and_the_printed_command_runs(tmp_path: Path) -> None:
    """`python -m stages.train` with train.num_processes 2 runs itself under accelerate launch (one
    blocking command, as DVC needs); rank 0 alone writes data/model, its front end and dvclive.
    Then the line `clapart launch-command --gpus-per-node 2 --cpu` prints runs in the same
    project (resuming the finished run's checkpoint, so it trains no step)."""
    toy._stage_project(tmp_path, num_processes=2, resume=True, select_by="loss", keep_best=0)
    _record_encoder(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "stages.train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "data/model/training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 2
    assert (tmp_path / "data/model/frontend.json").is_file() and (tmp_path / "dvclive/metrics.json").is_file()
    assert proc.stderr.count("saved captioner to") == 1  # rank 0 only

    printed = subprocess.run(
        [sys.executable, "-m", "clapart_core.cli", "launch-command", "--gpus-per-node", "2", "--cpu", "--port", str(distributed.free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert printed[0] == "# train.num_processes: 2 in params.yaml; machine 0 of 1"
    again = subprocess.run(["bash", "-c", printed[1]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "data/model/training_summary.json").read_text())["resumed_from_step"] == 2


def _record_encoder(root: Path) -> None:
    """Give the toy project's tokens the encoder record the stage's front end (frontend.json) reads."""
    from clapart_core.encoders.registry import token_metadata, token_type
    from clapart_core.pipeline.storage import read_tokens, write_tokens

    meta = token_metadata(token_type("beats_rvq"), 2, 8, {"spec": {"random": {}}, "pretrained": False, "weights_sha256": None})
    for split in ("train", "val"):
        path = root / f"data/tokens/{split}.parquet"
        table = read_tokens(path)
        rows = list(zip(table.clip_ids, table.codes, strict=True))
        write_tokens(path, iter(rows), meta)


def test_launch_command_cli_slurm_script_and_one_line_errors() -> None:
    from typer.testing import CliRunner

    from clapart_core.cli import app

    result = CliRunner().invoke(app, ["launch-command", "--nodes", "2", "--gpus-per-node", "8", "--slurm", "--phase", "clotho"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "#SBATCH --nodes=2" in lines and "#SBATCH --gpus-per-node=8" in lines
    assert lines[-1] == (
        "srun bash -c 'accelerate launch --multi_gpu --num_processes 16 --num_machines 2 --machine_rank $SLURM_NODEID "
        "--main_process_ip $MAIN_IP --main_process_port 29500 --mixed_precision no --dynamo_backend no -m stages.train --phase clotho'"
    )
    bad = CliRunner().invoke(app, ["launch-command", "--nodes", "2", "--gpus-per-node", "4"])
    assert bad.exit_code == 2 and "error: several machines need the address of machine 0 (--main-ip)" in bad.output


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="the refusal needs fewer than 2 GPUs")
def test_relaunch_refuses_more_gpu_processes_than_gpus() -> None:
    with pytest.raises(ParamsError, match=r"train.num_processes=2 but this machine has [01] GPU\(s\), one per process"):
        distributed.relaunch("stages.train", [], 2, cpu=False)
