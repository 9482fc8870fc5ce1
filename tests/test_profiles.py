"""Profiles: the shipped params.yaml is the demo profile, every profile has the same keys (so
`dvc exp run -S key=value` works in each), and `clapart profile` switches there and back."""

from __future__ import annotations

import shutil
import sys
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
    # EnCLAP's cfg/clotho_finetune: time_scale 1000 (the AudioCaps phase: transformers' default, the warm-up)
    assert (phase["train"]["lr"], phase["train"]["warmup_steps"], phase["train"]["timescale"], phase["train"]["batch_size"]) == (2e-5, 0, 1000, 64)
    assert paper["train"]["timescale"] is None and paper["train"]["warmup_steps"] == 2000
    assert phase["train"]["label_smoothing"] == paper["train"]["label_smoothing"]  # inherited
    # selection by the paper's metric, the 5 best epochs kept (EnCLAP's authors evaluate 5)
    assert (paper["train"]["select_by"], paper["train"]["keep_best"]) == ("spider", 5) and phase["train"]["keep_best"] == 5
    assert paper["model"]["max_frames"] == 1016 and paper["beats"]["layer"] is None


def _differences(a: dict, b: dict, prefix: str = "") -> dict[str, tuple]:
    """Leaf keys whose values differ between two params dicts: ``{dotted key: (a, b)}``."""
    out = {}
    for k in a:
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            out |= _differences(a[k], b[k], f"{prefix}{k}.")
        elif a[k] != b[k]:
            out[f"{prefix}{k}"] = (a[k], b[k])
    return out


def test_large_profiles_are_the_base_ones_with_enclap_large_recipe():
    """EnCLAP-large (jaeyeonkim99/EnCLAP cfg/audiocaps/large.yaml, cfg/clotho_finetune/large.yaml):
    facebook/bart-large, batch 64, peak lr 3e-5; its Clotho fine-tune lr 1.25e-5; nothing else changes."""
    load = lambda name: yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text())  # noqa: E731
    large_recipe = {"model.pretrained": ("facebook/bart-base", "facebook/bart-large"), "train.batch_size": (16, 64), "train.lr": (6.5e-5, 3e-5)}
    assert _differences(load("paper-audiocaps"), load("paper-audiocaps-large")) == large_recipe
    assert _differences(load("paper-clotho"), load("paper-clotho-large")) == {**large_recipe, "finetune.clotho.train.lr": (2e-5, 1.25e-5)}
    phase = phase_params(load("paper-clotho-large"), "clotho")
    assert (phase["train"]["lr"], phase["train"]["warmup_steps"], phase["train"]["batch_size"]) == (1.25e-5, 0, 64)
    assert phase["model"]["pretrained"] == "facebook/bart-large"


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
    available = "available: demo, paper-audiocaps, paper-audiocaps-large, paper-clotho, paper-clotho-large, paper-rehearsal"
    assert available in runner.invoke(app, ["profile", "nope"]).output
    for name in ("paper-audiocaps-large", "paper-clotho-large", "paper-rehearsal", "demo"):
        assert runner.invoke(app, ["profile", name]).exit_code == 0
        assert (tmp_path / "params.yaml").read_bytes() == (tmp_path / f"profiles/{name}.yaml").read_bytes()
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    refused = runner.invoke(app, ["profile", "demo"])
    assert refused.exit_code == 2 and (tmp_path / "params.yaml").read_text() == "seed: 1\n"


def test_switch_after_dvc_rewrote_params(tmp_path, monkeypatch):
    """`dvc exp run -S` rewrites params.yaml (null becomes an empty value): the values still match
    the demo profile, so switching is allowed; a changed value is still refused."""
    from dvc.utils.serialize import modify_yaml

    shutil.copytree(ROOT / "profiles", tmp_path / "profiles")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for layers in (8, 16):  # an experiment, then back: DVC's own writer both times
        with modify_yaml("params.yaml") as params:
            params["rvq"]["layers"] = layers
    text = (tmp_path / "params.yaml").read_text()
    assert "checkpoint: null" not in text and text != (ROOT / "params.yaml").read_text()
    runner = CliRunner()
    switched = runner.invoke(app, ["profile", "paper-audiocaps"])
    assert switched.exit_code == 0, switched.output
    with modify_yaml("params.yaml") as params:
        params["rvq"]["layers"] = 8
    refused = runner.invoke(app, ["profile", "demo"])
    assert refused.exit_code == 2 and "no profile holds" in refused.output


def test_version_and_stage_commands_take_phase(tmp_path, monkeypatch):
    from clapart_core import __version__

    runner = CliRunner()
    shown = runner.invoke(app, ["--version"])
    assert shown.exit_code == 0 and shown.output == f"clapart {__version__}\n"
    # `clapart decode --phase NAME` runs the ft_decode command line; an unknown phase is one line
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "stages.decode", raising=False)  # runpy runs it afresh, as `clapart` does
    result = runner.invoke(app, ["decode", "--phase", "clotho"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == "error: params.yaml: no finetune.clotho entry (phases: none) (stage decode@clotho)"
