"""Profiles: the shipped params.yaml is the demo profile, every profile has the same keys (so
`dvc exp run -S key=value` works in each), and `clapart profile` switches there and back."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from clapart_core.cli import app
from clapart_core.pipeline.params import phase_params

ROOT = Path(__file__).resolve().parents[1]


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        # free-form blocks may differ between profiles: model sizes, fine-tuning phases
        if isinstance(v, dict) and k not in ("random", "finetune"):
            out |= _keys(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def test_params_is_demo_profile_and_keys_match():
    assert (ROOT / "params.yaml").read_bytes() == (ROOT / "profiles/demo.yaml").read_bytes()
    demo = _keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for path in (ROOT / "profiles").glob("*.yaml"):
        assert _keys(yaml.safe_load(path.read_text())) == demo, path.name
    paper = yaml.safe_load((ROOT / "profiles/paper-audiocaps.yaml").read_text())
    assert paper["rvq"]["max_layers"] == 16 and paper["rvq"]["codebook_size"] == 1024
    assert paper["model"]["pretrained"] == "facebook/bart-base" and paper["train"]["lr"] == 6.5e-5
    # the Clotho setting = the AudioCaps profile + one fine-tuning phase (lr 2e-5, no warm-up, batch 64)
    clotho = yaml.safe_load((ROOT / "profiles/paper-clotho.yaml").read_text())
    assert {k: v for k, v in clotho.items() if k != "finetune"} == {k: v for k, v in paper.items() if k != "finetune"}
    phase = phase_params(clotho, "clotho")
    assert phase["data"]["source"] == "clotho" and phase["data"]["strict"] is False
    assert (phase["train"]["lr"], phase["train"]["warmup_steps"], phase["train"]["batch_size"]) == (2e-5, 0, 64)
    assert phase["train"]["label_smoothing"] == paper["train"]["label_smoothing"]  # inherited


def test_switch_and_back(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["profile", "paper-audiocaps"]).exit_code == 0
    assert (tmp_path / "params.yaml").read_bytes() == (tmp_path / "profiles/paper-audiocaps.yaml").read_bytes()
    assert runner.invoke(app, ["profile", "demo"]).exit_code == 0
    assert (tmp_path / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
    # unknown profile, and local edits that no profile holds, are refused
    assert "available: demo, paper-audiocaps, paper-clotho, paper-rehearsal" in runner.invoke(app, ["profile", "nope"]).output
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    refused = runner.invoke(app, ["profile", "demo"])
    assert refused.exit_code == 2 and (tmp_path / "params.yaml").read_text() == "seed: 1\n"
