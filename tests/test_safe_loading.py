"""Safe loading (issue 6), at the level a user meets it: a crafted pickle given as a checkpoint
to a stage or to `clapart caption` stops with one `error: ...` line and its payload never runs;
a manifest CSV naming a path outside data.root stops the corpus stage naming file and line; the
source has no `eval`/`exec`/unsafe YAML or pickle loading. (The train resume checkpoint's own
refusal is in test_train_resume.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import yaml
from typer.testing import CliRunner

from clapart_core.corpus.manifest import MANIFEST_SCHEMA, ROOT_KEY, ManifestError, read_manifest
from clapart_core.pipeline.config import write_configs

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """An official-looking BEATs checkpoint whose weights would run ``open(marker, "w")``."""
    torch.save({"cfg": {"encoder_layers": 1}, "model": {"patch_embedding.weight": _Payload(str(marker))}}, path)
    return path


def _stage(name: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The stage failed with exit status 2 (a user error) and a last stderr line ``error: ...``, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    return last


@pytest.mark.parametrize(("etype", "section"), [("beats_rvq", "beats"), ("beats_tokenizer", "beats_tokenizer")])
def test_features_stage_refuses_crafted_checkpoint(tmp_path: Path, etype: str, section: str) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["encoder"]["type"] = etype
    params[section]["checkpoint"] = str(evil)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_configs(params, tmp_path / "data" / "config")  # what the configure stage would write

    line = _one_error_line(_stage("features", tmp_path))
    refused = rf"error: {re.escape(str(evil))} was refused by torch\.load\(weights_only=True\): it would call \S*open .*"
    assert re.fullmatch(refused + r" \(stage features\)", line), line
    assert not marker.exists()


def test_caption_cli_refuses_crafted_encoder_checkpoint(tmp_path: Path) -> None:
    """`clapart caption` rebuilds the encoder named by the model's frontend.json: a tampered
    entry pointing at a crafted pickle (inside the directory, where frontend.json paths must be)
    is refused before anything runs."""
    from clapart_core.captioner.model import ClapArtConfig, small_bart_config
    from clapart_core.cli import app

    marker = tmp_path / "pwned"
    model = tmp_path / "model"
    (model / "frontend" / "encoder").mkdir(parents=True)
    _evil_checkpoint(model / "frontend" / "encoder" / "evil.pt", marker)
    ClapArtConfig(bart=small_bart_config(50, 16, 1, 1, 2, 32), num_codebooks=1, codebook_size=8, use_clap=False).save_pretrained(str(model))
    spec = {"checkpoint": "frontend/encoder/evil.pt", "random": None, "seed": 0}
    encoder = {"name": "beats", "spec": spec, "pretrained": True, "weights_sha256": "0" * 16}
    (model / "frontend.json").write_text(json.dumps({"encoder_type": "beats_rvq", "encoder": encoder, "num_codebooks": 1, "clap": None}))
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(16_000, np.float32), 16_000)
    result = CliRunner().invoke(app, ["caption", str(clip), "--model", str(model), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "refused by torch.load(weights_only=True)" in line
    assert not marker.exists()


@pytest.mark.parametrize("escape", ["../outside.wav", "ABSOLUTE"])
def test_corpus_stage_refuses_csv_path_outside_data_root(tmp_path: Path, escape: str) -> None:
    outside = tmp_path / "outside.wav"
    sf.write(outside, np.zeros(1600, np.float32), 16000)  # it exists: only the check can stop it
    name = str(outside) if escape == "ABSOLUTE" else escape
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.csv").write_text(f"file_name,caption_1\n{name},a dog barks\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="folder", root="corpus")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    line = _one_error_line(_stage("corpus", tmp_path))
    assert line == f"error: corpus/train.csv line 2: audio path {name!r} escapes the corpus root (absolute or '..') (stage corpus)"
    assert not (tmp_path / "data" / "corpus" / "manifest.parquet").exists()


def test_tampered_manifest_path_is_refused_naming_file_and_clip(tmp_path: Path) -> None:
    """A manifest written by other means than write_manifest is validated when read."""
    table = pa.table(
        {"clip_id": ["a", "b"], "split": ["train", "train"], "audio_path": ["a.wav", "../../etc/b.wav"],
         "captions": [["x"], ["y"]], "duration_s": [1.0, 1.0]},
        schema=MANIFEST_SCHEMA,
    ).replace_schema_metadata({ROOT_KEY: b"corpus"})
    pq.write_table(table, tmp_path / "manifest.parquet")
    with pytest.raises(ManifestError, match=r"manifest\.parquet clip 'b': audio path '\.\./\.\./etc/b\.wav' escapes the corpus root"):
        read_manifest(tmp_path / "manifest.parquet")


# What may not appear in the package or the stages: each pattern with why.
_FORBIDDEN = {
    r"(?<![\w.])eval\(": "eval of a string",
    r"(?<![\w.])exec\(": "exec of a string",
    r"yaml\.(load|unsafe_load|full_load)\(": "YAML loading that can construct objects (use yaml.safe_load)",
    r"pickle\.loads?\(": "unpickling (runs code)",
    r"allow_pickle\s*=\s*True": "np.load with pickles",
    r"weights_only\s*=\s*False": "torch.load without the weights_only guard",
}


def test_source_has_no_unsafe_loading_or_eval() -> None:
    files = sorted([*(ROOT / "clapart_core").rglob("*.py"), *(ROOT / "stages").rglob("*.py")])
    found = []
    for path in files:
        text = path.read_text()
        for pattern, why in _FORBIDDEN.items():
            for m in re.finditer(pattern, text):
                found.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {why}")
        # every torch.load passes weights_only=True explicitly (in the same call)
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.end() : text.find(")", m.end()) + 1]
            if "weights_only=True" not in call:
                found.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: torch.load without weights_only=True")
    assert not found, "\n".join(found)


def test_corpus_stage_refuses_a_symlink_out_of_data_root(tmp_path: Path) -> None:
    """A CSV path that stays inside the root on paper but is a symlink to a file outside it is
    refused: paths are compared with their symlinks resolved."""
    outside = tmp_path / "outside.wav"
    sf.write(outside, np.zeros(16000, np.float32), 16000)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "link.wav").symlink_to(outside)
    (corpus / "train.csv").write_text("file_name,caption_1\nlink.wav,a dog barks\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="folder", root="corpus")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    line = _one_error_line(_stage("corpus", tmp_path))
    assert line.startswith(f"error: corpus/link.wav: a symlink leads out of the corpus root corpus (to {outside}); ") and line.endswith("(stage corpus)"), line
    assert not (tmp_path / "data" / "corpus" / "manifest.parquet").exists()


def test_symlinks_inside_the_corpus_and_a_symlinked_root_are_fine(tmp_path: Path) -> None:
    from clapart_core.corpus.manifest import resolve_audio_path

    disk = tmp_path / "disk"
    (disk / "audio").mkdir(parents=True)
    (disk / "audio" / "a.wav").write_bytes(b"x")
    (disk / "alias.wav").symlink_to(disk / "audio" / "a.wav")
    (tmp_path / "root").symlink_to(disk)  # data.root itself a link to a data disk
    assert resolve_audio_path(tmp_path / "root", "alias.wav") == tmp_path / "root" / "alias.wav"
    assert resolve_audio_path(tmp_path / "root", "audio/missing.wav") == tmp_path / "root" / "audio" / "missing.wav"
    (tmp_path / "elsewhere").mkdir()
    (disk / "audio" / "up").symlink_to(tmp_path / "elsewhere")  # a folder link out of the root
    with pytest.raises(ManifestError, match="a symlink leads out of the corpus root"):
        resolve_audio_path(tmp_path / "root", "audio/up/b.wav")
