"""Sharded extraction (issue 14 item 2): `features`, `clap` and `tokenize` with
extract.num_processes = 2 write the same bytes as with 1 process, and a killed 2-process run
resumes from the shards its ranks finished (clapart_core/pipeline/resume.py, run_sharded).

The stages run as subprocesses of a tiny generated project, as tests/test_crash_safety.py does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tiny_project_params

from clapart_core.pipeline.storage import SPLITS

# 4 clips per shard group: the 14 train clips are several groups for each rank (2 + 2, the last one short)
ENV = {"HF_HUB_OFFLINE": "1", "CLAPART_SHARD_CLIPS": "4", "OMP_NUM_THREADS": "1"}


def _stage(project: Path, name: str, processes: int) -> str:
    _set_processes(project, processes)
    proc = subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=project, env={**os.environ, **ENV}, capture_output=True, text=True)
    assert proc.returncode == 0, f"stage {name} failed:\n{proc.stderr[-4000:]}"
    return proc.stderr


def _set_processes(project: Path, processes: int) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["extract"]["num_processes"] = processes
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo project with the corpus decoded (14/3/3 clips of 3 s)."""
    proj = tmp_path_factory.mktemp("shardproj")
    for name in ("clapart_core", "stages"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    small = {"data": {"demo": {"n_clips": 20}}, "beats": {"batch_size": 2}, "clap": {"batch_size": 2}, "rvq": {"kmeans": {"max_samples": 2000}}}
    params = tiny_project_params(small)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("corpus", "configure", "decode"):
        _stage(proj, name, 1)
    return proj


def _outputs(project: Path) -> dict[str, bytes]:
    files = [project / "data/features/encoder" / f"{s}.h5" for s in SPLITS] + [project / "data/features/clap" / f"{s}.h5" for s in SPLITS]
    files += [project / "data/tokens" / f"{s}.parquet" for s in SPLITS]
    return {str(f.relative_to(project)): f.read_bytes() for f in files}


def test_two_processes_write_the_same_files_as_one(project: Path) -> None:
    for name in ("features", "clap", "codebooks", "tokenize"):
        _stage(project, name, 1)
    one = _outputs(project)
    for name in ("features", "clap", "tokenize"):
        log = _stage(project, name, 2)
        # both ranks computed, and the parent wrote the files from their shards alone
        for rank in (0, 1):
            assert re.search(rf"train: rank {rank} of 2 computed ([1-9]\d*) of its \1 groups", log), log[-3000:]
        assert re.search(r"train: reused 14 of 14 clips from finished shards, computed 0", log), log[-3000:]
    two = _outputs(project)
    assert one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], f"{name} differs between 1 and 2 processes"
    assert not (project / "data/.resume").exists() or not any((project / "data/.resume").iterdir())


def test_a_killed_two_process_run_resumes(project: Path) -> None:
    out = project / "data/features/encoder/train.h5"
    if not out.exists():
        _stage(project, "features", 1)
    clean = out.read_bytes()
    shutil.rmtree(out.parent)  # as DVC does before it reruns the stage
    shards = project / "data/.resume/features/train"
    _set_processes(project, 2)
    proc = subprocess.Popen([sys.executable, "-m", "stages.features"], cwd=project, env={**os.environ, **ENV}, stderr=subprocess.PIPE, text=True)
    try:
        while len(list(shards.glob("*.npz"))) < 2:
            assert proc.poll() is None, f"features ended (rc {proc.returncode}) before two groups were done:\n{proc.stderr.read()[-3000:]}"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # the parent: its ranks die with it (PR_SET_PDEATHSIG)
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not out.exists()  # DVC would have deleted it; the stage had not reached the assembly
    log = _stage(project, "features", 2)
    resumed = re.search(r"beats train: resuming with (\d+) of 14 clips done", log)
    assert resumed and int(resumed[1]) >= 8, log[-3000:]
    assert out.read_bytes() == clean
