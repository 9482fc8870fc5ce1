"""The params schema (clapart_core/pipeline/schema.py) as a user meets it: the configure stage
refuses each ordinary mistake in one line naming the key, with exit code 2 and no traceback,
before any long stage, and leaves the previous data/config set whole (or none at all)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from clapart_core.encoders.registry import TOKEN_TYPES
from clapart_core.pipeline.config import PreflightError, preflight
from clapart_core.pipeline.errors import ParamsError
from clapart_core.pipeline.params import FINETUNE_SECTIONS, run_stage
from clapart_core.pipeline.schema import FinetunePhase, Params, validate_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
_DELETE = object()


def _with(changes: dict[str, Any], base: dict[str, Any] = PARAMS) -> dict[str, Any]:
    """``base`` with dotted keys set (``_DELETE``: removed)."""
    params = copy.deepcopy(base)
    for key, value in changes.items():
        *path, leaf = key.split(".")
        node = params
        for part in path:
            node = node[part]
        if value is _DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return params


def _configure(project: Path, params: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run the configure stage in ``project`` (in this process); returns (exit code, stderr lines)."""
    from stages.configure import main

    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    capsys.readouterr()
    cwd = Path.cwd()
    os.chdir(project)
    try:
        run_stage("configure", main, argv=[])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        os.chdir(cwd)
    return code, capsys.readouterr().err.strip().splitlines()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def test_shipped_params_and_profiles_are_valid():
    for path in [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]:
        validate_params(yaml.safe_load(path.read_text()), path.name)
    # every token type's encoder settings are a section of the schema (a new type needs its line)
    assert {t.section for t in TOKEN_TYPES.values()} <= set(Params.model_fields)
    assert set(FinetunePhase.model_fields) == set(FINETUNE_SECTIONS)


# failure 4 of issue 13: each passed configure and failed late or never
MISTAKES = [
    ({"rvq.layers": 0}, r"rvq\.layers = 0 should be greater than or equal to 1"),
    ({"rvq.layers": 17}, r"rvq\.layers = 17 is more than rvq\.max_layers = 16"),
    ({"rvq.codebook_size": 0}, r"rvq\.codebook_size = 0 should be greater than or equal to 2"),
    ({"rvq.codebook_size": 3}, r"rvq\.codebook_size = 3 must be a power of two"),
    ({"rvq.codebook_size": 4096, "rvq.kmeans.max_samples": 1000}, r"rvq\.codebook_size = 4096 is more than rvq\.kmeans\.max_samples = 1000"),
    ({"train.batch_size": 0}, r"train\.batch_size = 0 should be greater than or equal to 1"),
    ({"train.lr": -0.001}, r"train\.lr = -0\.001 should be greater than or equal to 0"),
    ({"train.lr": "1e-3"}, r"train\.lr = '1e-3' should be a valid number \(YAML reads 1e-3 as text: write 0\.001\)"),
    ({"generate.num_beams": 0}, r"generate\.num_beams = 0 should be greater than or equal to 1"),
    ({"generate.max_length": 0}, r"generate\.max_length = 0 should be greater than or equal to 4"),
    ({"decode.on_error": "ignore"}, r"decode\.on_error = 'ignore' should be 'fail' or 'skip'"),
    ({"decode.max_seconds": -1}, r"decode\.max_seconds = -1 should be greater than 0"),
    ({"seed": "abc"}, r"seed = 'abc' should be a valid integer"),
    ({"data.root": _DELETE}, r"missing key data\.root"),
    ({"data.root": None}, r"data\.root is null \(or empty\)"),
    ({"data.source": "hdf5"}, r"data\.source = 'hdf5' should be 'demo', 'folder', 'clotho' or 'audiocaps'"),
    ({"encoder.type": "wav2vec"}, r"encoder\.type = 'wav2vec' is not a token type; choose one of beats_rvq, beats_tokenizer, encodec"),
    ({"beats.device": "gpu"}, r"beats\.device = 'gpu' must be auto, cpu, cuda or cuda:N"),
    ({"train.bf16": 1}, r"train\.bf16 = 1 should be a valid boolean"),
    ({"train.num_processes": 0}, r"train\.num_processes = 0 should be greater than or equal to 1"),
    ({"train.num_processes": 64}, r"train\.num_processes = 64 is more than train\.batch_size = 32: some processes would never get a row"),
    ({"train.num_processes": 2, "train.device": "cuda:1"}, r"train\.device = 'cuda:1' names one GPU, but train\.num_processes > 1 runs one process per GPU"),
    ({"model.d_model": 250}, r"model\.d_model = 250 is not a multiple of model\.attention_heads = 4"),
    ({"encodec.bandwidth": 7.0}, r"encodec\.bandwidth = 7\.0 is not a bandwidth EnCodec 24 kHz has"),
    ({"rvq.layer": 8}, r"unknown key rvq\.layer; did you mean rvq\.layers\?"),
    ({"layers": 8}, r"unknown key layers; did you mean rvq\.layers\?"),  # `-S +layers=8`
    ({"rvq": 8}, r"rvq should be a mapping of keys, not 8"),
    # codebooks from another corpus or a file (issue 15 item 1)
    ({"codebook_corpus.source": "folder"}, r"codebook_corpus\.root = null must name the corpus folder when codebook_corpus\.source = 'folder'"),
    ({"codebook_corpus.rot": "x"}, r"codebook_corpus\.rot = 'x' is not a data key"),
    ({"codebook_corpus.source": "demo", "codebook_corpus.root": "x", "codebook_corpus.demo": {"n_clips": 2, "clip_seconds": 4.0}},
     r"codebook_corpus\.demo\.n_clips = 2 should be greater than or equal to 7"),
    ({"codebook_corpus.source": "folder", "codebook_corpus.root": "/nope/b"}, r"codebook_corpus\.root = '/nope/b' is not a folder"),
    ({"codebook_corpus.source": "folder", "codebook_corpus.root": "data/corpus/demo"}, r"codebook_corpus\.root = 'data/corpus/demo' is data\.root"),
    ({"rvq.codebooks_file": "/nope/rvq.npz"}, r"rvq\.codebooks_file = '/nope/rvq\.npz' does not exist"),
    ({"codebook_corpus.source": "folder", "codebook_corpus.root": "/", "rvq.codebooks_file": "/nope/rvq.npz"},
     r"codebook_corpus\.source and rvq\.codebooks_file are both set"),
    ({"encoder.type": "encodec", "rvq.codebooks_file": "/nope/rvq.npz"}, r"rvq\.codebooks_file is set but encoder\.type = encodec produces its own codes"),
]


@pytest.mark.parametrize(("changes", "expected"), MISTAKES, ids=[",".join(c) + f"={list(c.values())[-1]!r}" for c, _ in MISTAKES])
def test_configure_refuses_each_mistake_in_one_line(tmp_path, capsys, changes, expected):
    assert _configure(tmp_path, PARAMS, capsys) == (0, [])
    before = _files(tmp_path / "data/config")
    assert sorted(before) == ["codebooks.json", "decode.json", "features.json", "tokenize.json"]

    code, lines = _configure(tmp_path, _with(changes), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert re.fullmatch(rf"error: params\.yaml: {expected}.* \(stage configure\)", lines[0]), lines[0]
    # the previous set is left whole: no file rewritten, none half-written
    assert _files(tmp_path / "data/config") == before
    assert not list(tmp_path.rglob("*.partial"))


def test_a_failed_first_configure_writes_nothing(tmp_path, capsys):
    code, lines = _configure(tmp_path, _with({"rvq.layers": 17}), capsys)
    assert code == 2 and len(lines) == 1
    assert not (tmp_path / "data/config").exists()


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ({"data": {"root": "x"}, "train": {"lr": -1.0}}, r"finetune\.ft\.train\.lr = -1\.0 should be greater than or equal to 0"),
        ({"data": {"rot": "x"}, "train": {}}, r"unknown key finetune\.ft\.data\.rot; did you mean finetune\.ft\.data\.root\?"),
        ({"data": {"root": "x"}}, r"missing key finetune\.ft\.train \(`train: \{\}` keeps the first phase's recipe\)"),
        ({"data": {}, "train": {}, "rvq": {"layers": 2}}, r"finetune\.ft may hold only data and train, not rvq"),
        ({"data": {"demo": {"n_clips": 2}}, "train": {}}, r"finetune\.ft\.data\.demo\.n_clips = 2 should be greater than or equal to 7"),
    ],
)
def test_every_finetune_phase_is_validated_with_its_overlay(phase, expected):
    with pytest.raises(ParamsError) as err:
        validate_params(_with({"finetune": {"ft": phase}}))
    assert re.fullmatch(rf"params\.yaml: {expected}.*", str(err.value)), str(err.value)


def test_several_problems_are_named_in_one_line():
    with pytest.raises(ParamsError) as err:
        validate_params(_with({"rvq.layers": 0, "train.lr": -1.0, "seed": -1, "generate.num_beams": 0, "decode.on_error": "x"}))
    msg = str(err.value)
    assert "\n" not in msg and msg.count(";") == 2 and msg.endswith("(and 2 more)"), msg


def test_preflight_checks_corpus_roots_and_pretrained_positions(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(PreflightError, match=r"^params\.yaml: data\.root = '/nope/corpus' is not a folder$"):
        preflight(_with({"data.source": "folder", "data.root": "/nope/corpus"}))
    with pytest.raises(PreflightError, match=r"finetune\.ft\.data\.root = '/nope' is not a folder \(or set download: true to fetch clotho\)"):
        preflight(_with({"finetune": {"ft": {"data": {"source": "clotho", "root": "/nope"}, "train": {}}}}))
    bart = tmp_path / "bart"
    bart.mkdir()
    (bart / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    with pytest.raises(PreflightError, match=r"model\.max_frames = 1016 needs 1018 positions .* has 512; set model\.max_frames <= 510"):
        preflight(_with({"model.pretrained": str(bart)}))
    assert preflight(_with({"model.pretrained": str(bart), "model.max_frames": 504})) == []  # 510 fits, 504 is also on the BEATs grid


def test_dvc_runs_configure_first_on_the_whole_params_file():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert next(iter(stages)) == "configure"
    assert stages["configure"]["params"] == [{"params.yaml": None}]


def _git_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    import shutil

    proj = tmp_path / "proj"
    for name in ("clapart_core", "stages"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, proj / name)
    (proj / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        subprocess.run(args, cwd=proj, env=env, check=True)
    return proj, env


def test_configure_stage_process_prints_one_line_and_exits_2(tmp_path):
    """`python -m stages.configure` itself: the one line, exit code 2, no traceback."""
    proj, env = _git_project(tmp_path)
    (proj / "params.yaml").write_text(yaml.safe_dump(_with({"rvq.layer": 8}), sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "stages.configure"], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: params.yaml: unknown key rvq.layer; did you mean rvq.layers? (stage configure)"]
    # with CLAPART_DEBUG=1 the same mistake shows where it was raised
    debug = subprocess.run([sys.executable, "-m", "stages.configure"], cwd=proj, env={**env, "CLAPART_DEBUG": "1"}, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ParamsError" in debug.stderr


@pytest.mark.slow
def test_dvc_exp_run_with_a_typo_key_stops_at_configure(tmp_path):
    """DVC's own hint for `-S rvq.layer=8` is `+rvq.layer=8`: that experiment fails at configure,
    in one line, before the corpus or any long stage runs."""
    proj, env = _git_project(tmp_path)
    proc = subprocess.run(["dvc", "exp", "run", "-S", "+rvq.layer=8"], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.findall(r"Running stage '([\w@.-]+)'", out) == ["configure"], out[-3000:]
    assert "error: params.yaml: unknown key rvq.layer; did you mean rvq.layers? (stage configure)" in out
    assert "Traceback" not in out
