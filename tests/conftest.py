"""Fixtures and sizes shared by the test files.

* ``one_thread``: tiny models run fastest on one thread (OpenMP spin-waits on a busy 2-core
  machine cost seconds); test modules that train or decode opt in with
  ``pytestmark = pytest.mark.usefixtures("one_thread")``.
* :func:`tiny_project_params`: the shipped ``params.yaml`` shrunk to a pipeline that runs in
  seconds (the real architectures at toy sizes), for tests that run stages or ``dvc repro``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from clapart_core.pipeline.params import merge_params

ROOT = Path(__file__).resolve().parents[1]

#: a one-layer 32-wide BEATs: real architecture, toy size
TINY_BEATS = {"encoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "embed_dim": 32}
#: overlay of params.yaml for a pipeline of seconds: 30 clips of 3 s, 4 x 16 codebooks, a 32-wide BART, one epoch
TINY_PARAMS: dict[str, Any] = {
    "data": {"demo": {"n_clips": 30, "clip_seconds": 3.0}},
    "beats": {"random": TINY_BEATS},
    "rvq": {"max_layers": 4, "codebook_size": 16, "layers": 4, "kmeans": {"niter": 4, "max_samples": 5000}},
    "model": {"vocab_size": 300, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 64},
    "train": {"epochs": 1, "batch_size": 16, "warmup_steps": 2},
    "generate": {"num_beams": 2, "max_length": 20},
}


def tiny_project_params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``params.yaml`` overlaid by :data:`TINY_PARAMS`, then by ``overrides`` (a fresh dict each call)."""
    params = merge_params(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_PARAMS)
    return merge_params(params, overrides or {})


@pytest.fixture
def one_thread():
    """Run the test with torch on one thread, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
