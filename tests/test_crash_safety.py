"""Crash safety: a stage killed (SIGKILL) at any moment and rerun gives byte-identical artifacts,
and `features` resumes from the clip groups a killed run had finished (clapart_core/pipeline/resume.py).

The stage tests run the real stage modules as subprocesses in a tiny generated project (as
tests/test_pipeline_e2e.py builds one, without git/DVC), killing them from outside (poll, then
SIGKILL) or from inside at a chosen point (a wrapper that SIGKILLs its own process at the n-th
rename of a ``.partial`` file or the n-th clip, so the moment is exact and the test not flaky).
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_BEATS, tiny_project_params

from clapart_core.corpus.decoded import PCM_SCALE
from clapart_core.encoders.beats import random_beats
from clapart_core.encoders.beats_extract import extract_beats_features
from clapart_core.pipeline.params import SPLITS
from clapart_core.pipeline.resume import plan_groups
from clapart_core.pipeline.storage import RaggedReader, RaggedWriter

ROOT = Path(__file__).resolve().parents[1]
TINY = {"data": {"demo": {"n_clips": 40}}, "beats": {"batch_size": 2}, "rvq": {"kmeans": {"max_samples": 2000}}}  # over conftest.TINY_PARAMS

# Runs a stage module and SIGKILLs its own process at an exact point:
#   replace N: just before the N-th rename of a "*.partial" file (a shard, key.json or the final file)
#   clip N:    when the stage encodes its N-th feature clip (tokenize: mid-split, before its token file)
KILLER = r"""
import os, runpy, signal, sys
module, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
count = 0
def tick():
    global count
    count += 1
    if count == n:
        os.kill(os.getpid(), signal.SIGKILL)
if mode == "replace":
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if str(src).endswith(".partial"):
            tick()
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
else:
    from clapart_core.tokens import rvq
    real_encode = rvq.ResidualVQ.encode
    def encode(self, x):
        tick()
        return real_encode(self, x)
    rvq.ResidualVQ.encode = encode
sys.argv = [module]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""



def _env() -> dict[str, str]:
    # 4 clips per shard: the tiny splits get several shards each
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "CLAPART_SHARD_CLIPS": "4"}


def _stage(project: Path, name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=project, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"stage {name} failed:\n{proc.stderr[-4000:]}"
    return proc.stderr


def _killed_at(project: Path, module: str, mode: str, n: int) -> str:
    proc = subprocess.run([sys.executable, "-c", KILLER, module, mode, str(n)], cwd=project, env=_env(), capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, f"{module} was not killed at {mode} {n} (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stderr


def _kill_when(project: Path, name: str, ready, strict: bool = True) -> str:
    """Start stage ``name``, SIGKILL it as soon as ``ready()`` is true; returns its log.
    ``strict=False`` accepts a run that completed before ``ready()`` (a timed kill on a busy machine)."""
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=project, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not ready():
            if proc.poll() is not None and not strict and proc.returncode == 0:
                return proc.communicate()[1]
            assert proc.poll() is None, f"stage {name} ended (rc {proc.returncode}) before the kill point:\n{proc.stderr.read()[-3000:]}"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return err


def _reused(log: str, desc: str, line: str = "reused") -> tuple[int, int]:
    """``(reused, total)`` clips from ShardedRun's summary line for ``desc`` (e.g. "beats train"),
    or with ``line="resuming with"`` from its first line (logged before any group is computed)."""
    m = re.search(rf"{desc}: {line} (\d+) of (\d+) clips", log)
    assert m, f"no summary for {desc!r} in:\n{log[-3000:]}"
    return int(m[1]), int(m[2])


def _h5_equal(a: Path, b: Path) -> None:
    """Same datasets, attrs and (h5py writes deterministically) bytes."""
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        for key in fa.keys():
            assert fa[key].dtype == fb[key].dtype and np.array_equal(fa[key][()], fb[key][()]), key
        assert dict(fa.attrs) == dict(fb.attrs)
    assert a.read_bytes() == b.read_bytes()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo project with the corpus decoded (28/6/6 clips of 3 s)."""
    proj = tmp_path_factory.mktemp("crashproj")
    for name in ("clapart_core", "stages"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = tiny_project_params(TINY)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("corpus", "configure", "decode"):
        _stage(proj, name)
    return proj


def test_features_stage_resumes_after_sigkill(project: Path, tmp_path: Path) -> None:
    out, work = project / "data/features/encoder", project / "data/.resume/features"
    log = _stage(project, "features")
    assert not work.exists(), "the shards are removed once every split is in place"
    clean = tmp_path / "clean"
    shutil.copytree(out, clean)
    shutil.rmtree(out)  # as DVC does before rerunning the stage

    def shards(split: str) -> int:
        return len(list((work / split).glob("*.npz")))

    # 1. killed from outside during train, once a shard is finished
    _kill_when(project, "features", lambda: shards("train") >= 1)
    assert not (out / "train.h5").exists()
    # 2. killed from inside just before a rename: inside train's shards (the rerun reuses the
    #    finished ones and rewrites the half-renamed one), then during val
    log = _killed_at(project, "stages.features", "replace", 3)
    reused, total = _reused(log, "beats train", "resuming with")
    assert 1 <= reused < total
    _kill_when(project, "features", lambda: shards("val") >= 1)
    # 3. to completion: train comes entirely from shards (finished splits keep theirs until the
    #    stage ends), val partly
    log = _stage(project, "features")
    assert _reused(log, "beats train") == (total, total)
    assert _reused(log, "beats val")[0] >= 1
    for split in SPLITS:
        _h5_equal(out / f"{split}.h5", clean / f"{split}.h5")
    assert not work.exists() and not list(out.glob("*.partial"))


def test_tokenize_stage_is_byte_identical_after_sigkill(project: Path, tmp_path: Path) -> None:
    if not (project / "data/features/encoder/test.h5").exists():
        _stage(project, "features")
    _stage(project, "codebooks")
    out = project / "data/tokens"
    start = time.monotonic()
    _stage(project, "tokenize")
    took = time.monotonic() - start
    clean = {split: (out / f"{split}.parquet").read_bytes() for split in SPLITS}
    n_train = len(RaggedReader(project / "data/features/encoder/train.h5"))
    shutil.rmtree(out)

    def no_false_finals() -> None:
        # a file under a final name is always the complete one
        for split in SPLITS:
            if (out / f"{split}.parquet").exists():
                assert (out / f"{split}.parquet").read_bytes() == clean[split], split

    # mid-train, mid-val, and at a rename (tokenize renames its resume shards too, so the 3rd rename
    # is a shard's or a token file's depending on what earlier kills left)
    for mode, n in (("clip", 3), ("clip", n_train + 2), ("replace", 3)):
        _killed_at(project, "stages.tokenize", mode, n)
        no_false_finals()
    assert not all((out / f"{split}.parquet").exists() for split in SPLITS)
    # and from outside at a random moment of a run (most of the time is spent importing torch)
    delay = random.Random().uniform(0.3, 0.9) * took
    start = time.monotonic()
    _kill_when(project, "tokenize", lambda: time.monotonic() - start >= delay, strict=False)
    no_false_finals()
    _stage(project, "tokenize")
    for split in SPLITS:
        assert (out / f"{split}.parquet").read_bytes() == clean[split], split
    assert not list(out.glob("*.partial"))


# ------------------------------------------------------------------------------- in-process


@pytest.fixture()
def audio(tmp_path: Path) -> Path:
    """Eleven 16 kHz clips of four lengths (so batches mix lengths) as a decoded-audio file."""
    rng = np.random.default_rng(0)
    path = tmp_path / "audio.h5"
    with RaggedWriter(path, (), np.int16, attrs={"sample_rate": 16000, "scale": PCM_SCALE}) as w:
        for i in range(11):
            n = [4000, 9000, 16000, 12345][i % 4]
            w.append(f"c{i}", (rng.standard_normal(n) * 3000).astype(np.int16))
    return path


def test_resume_reuses_shards_and_discards_them_when_settings_change(audio: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CLAPART_SHARD_CLIPS", "4")
    model = random_beats(TINY_BEATS, seed=1)
    clean, out, work = tmp_path / "clean.h5", tmp_path / "f.h5", tmp_path / "work"
    extract_beats_features(model, audio, clean, batch_size=2)
    assert not (tmp_path / "clean.h5.parts").exists()

    calls = 0
    real = model.extract_features

    def crashing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 5:  # groups are 2 batches: groups 0 and 1 are finished
            raise RuntimeError("crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "extract_features", crashing)
    with pytest.raises(RuntimeError, match="crash"):
        extract_beats_features(model, audio, out, batch_size=2, work_dir=work)
    assert not out.exists() and sorted(p.name for p in work.iterdir()) == ["000000.npz", "000001.npz", "key.json"]

    calls = -100
    with caplog.at_level(logging.INFO, logger="clapart_core.pipeline.resume"):
        extract_beats_features(model, audio, out, batch_size=2, work_dir=work)
    assert calls == -100 + 2  # 6 batches, 4 reused
    assert "reused 8 of 11 clips" in caplog.text
    _h5_equal(out, clean)
    assert not work.exists()

    # shards computed with another batch size are not mixed in
    monkeypatch.setattr(model, "extract_features", crashing)
    calls = 2
    with pytest.raises(RuntimeError, match="crash"):
        extract_beats_features(model, audio, out, batch_size=2, work_dir=work)
    monkeypatch.setattr(model, "extract_features", real)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clapart_core.pipeline.resume"):
        extract_beats_features(model, audio, out, batch_size=3, work_dir=work)
    assert "discarding" in caplog.text and "reused 0 of 11 clips" in caplog.text
    extract_beats_features(model, audio, clean, batch_size=3)
    _h5_equal(out, clean)


def test_groups_are_whole_batches_bounded_by_clips_and_samples() -> None:
    batches = [[0, 1], [2, 3], [4, 5], [6]]
    assert plan_groups(batches, max_clips=3) == [[[0, 1], [2, 3]], [[4, 5], [6]]]
    sizes = np.array([10, 10, 10, 10, 500, 10, 10])
    assert plan_groups(batches, sizes, max_clips=100, max_size=100) == [[[0, 1], [2, 3], [4, 5]], [[6]]]
