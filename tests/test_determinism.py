"""Determinism (issue 6): the same params and seed give byte-identical token artifacts and the
same trained model across reruns on one machine.

Two fresh processes (with different Python hash seeds, so nothing may depend on str hashing)
each run the real `features -> codebooks -> tokenize` stage modules on the same tiny decoded
audio, then train a tiny captioner for a few steps on the tokens. Every file the stages write
must be byte-identical, and so must the first-step loss and the trained weights.
What is *not* bitwise across thread counts is measured by ``bench/determinism.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from conftest import tiny_project_params

from clapart_core.corpus.decoded import PCM_SCALE, audio_path
from clapart_core.encoders.spec import BEATS_SAMPLE_RATE as BEATS_RATE
from clapart_core.pipeline.config import write_configs
from clapart_core.pipeline.storage import SPLITS, RaggedWriter

ROOT = Path(__file__).resolve().parents[1]

TINY = {"rvq": {"max_layers": 3, "layers": 3}}  # over conftest.TINY_PARAMS

_CHILD = """
import hashlib, json, runpy
from pathlib import Path
import numpy as np
for stage in ("features", "codebooks", "tokenize"):
    runpy.run_module(f"stages.{stage}", run_name="__main__", alter_sys=True)

from clapart_core.pipeline.storage import read_tokens
from clapart_core.captioner.data import CaptionExample
from clapart_core.captioner.training import train_captioner

tokens = read_tokens(Path("data/tokens/train.parquet"))
words = ["dog barks", "rain falls", "car passes", "bird sings"]
train = [CaptionExample(cid, np.asarray(c), None, (f"a {words[i % 4]}",)) for i, (cid, c) in enumerate(zip(tokens.clip_ids, tokens.codes))]
model = dict(pretrained=None, tokenizer=None, vocab_size=300, codebook_size=16, d_model=32, encoder_layers=1,
             decoder_layers=1, attention_heads=2, ffn_dim=64, dropout=0.1, use_clap=False, max_frames=32)
params = dict(epochs=2, batch_size=3, lr=3e-3, warmup_steps=2, weight_decay=0.01, label_smoothing=0.2, grad_clip=1.0,
              mcm_weight=0.7, mcm_prob=0.15, mcm_span=2, device="cpu", bf16=False, num_threads=1)
summary = train_captioner(train, [], model_params=model, train_params=params, out_dir=Path("model"), live_dir=None, seed=3)
weights = hashlib.sha256(Path("model/model.safetensors").read_bytes()).hexdigest()
print(json.dumps({"first_step_loss": summary["first_step_loss"], "final_loss": summary["final_loss"], "weights": weights}))
"""



def _project(root: Path) -> None:
    """Tiny decoded audio (tones + seeded noise, 1-1.5 s) and the configs configure would write."""
    rng = np.random.default_rng(0)
    for split, n in zip(SPLITS, (8, 3, 3), strict=True):
        attrs = {"sample_rate": BEATS_RATE, "scale": PCM_SCALE, "split": split}
        with RaggedWriter(audio_path(root / "data/audio", BEATS_RATE, split), (), np.int16, attrs=attrs) as w:
            for i in range(n):
                t = np.arange(int(BEATS_RATE * (1.0 + 0.1 * i))) / BEATS_RATE
                wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)
                w.append(f"{split}/clip{i}", np.round(wave * PCM_SCALE).astype(np.int16))
    params = tiny_project_params(TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    write_configs(params, root / "data/config")


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file the stages wrote."""
    found = [p for d in ("data/features", "data/codebooks", "data/tokens", "metrics") for p in sorted((root / d).rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in found}


def test_token_stages_and_training_are_bitwise_reproducible(tmp_path: Path) -> None:
    results = []
    for run, hash_seed in (("a", "1"), ("b", "2")):
        root = tmp_path / run
        _project(root)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-c", _CHILD], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append((_files(root), json.loads(proc.stdout.strip().splitlines()[-1])))
    (files_a, train_a), (files_b, train_b) = results
    assert {"data/features/encoder/train.h5", "data/codebooks/rvq.npz", "data/tokens/train.parquet", "metrics/rvq.json"} <= set(files_a)
    assert files_a == files_b
    assert train_a == train_b
    assert np.isfinite(train_a["first_step_loss"])
