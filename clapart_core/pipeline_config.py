"""Resolve ``params.yaml`` into the settings each token-producing stage actually uses.

Why a stage for this: which keys matter depends on ``encoder.type``. Under ``beats_rvq`` the
codebook fit reads ``rvq.max_layers``/``rvq.codebook_size``/``rvq.kmeans.*`` and tokenisation
reads ``rvq.layers``; under ``beats_tokenizer`` or ``encodec`` the codes come straight from the
encoder and no ``rvq.*`` key applies. DVC's ``params:`` lists are static, so a stage that listed
``rvq.layers`` would rerun under ``encodec`` whenever it changed. Instead the cheap ``configure``
stage (no torch import, well under a second) lists every such key and writes one small JSON per
stage holding only what applies; the stages depend on those files. When an inapplicable key
changes, ``configure`` rewrites byte-identical files and DVC reruns nothing downstream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENCODER_TYPES = ("beats_rvq", "beats_tokenizer", "encodec")
BEATS_RATE, ENCODEC_RATE, CLAP_RATE = 16_000, 24_000, 48_000
CONFIG_DIR = Path("data/config")


def resolve(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``params`` -> ``{"decode": ..., "features": ..., "codebooks": ..., "tokenize": ...}``."""
    etype = params["encoder"]["type"]
    if etype not in ENCODER_TYPES:
        raise ValueError(f"params.yaml: encoder.type={etype!r} is not one of {', '.join(ENCODER_TYPES)}")
    rates = {ENCODEC_RATE if etype == "encodec" else BEATS_RATE, CLAP_RATE}
    decode = {"sample_rates": sorted(rates), "max_seconds": params["decode"]["max_seconds"], "on_error": params["decode"]["on_error"]}

    seed = params["seed"]
    if etype == "beats_rvq":
        b = params["beats"]
        encoder = {"checkpoint": b["checkpoint"], "random": b["random"], "seed": seed}
        run = {"batch_size": b["batch_size"], "device": b["device"], "bf16": b["bf16"]}
    elif etype == "beats_tokenizer":
        b = params["beats_tokenizer"]
        encoder = {"checkpoint": b["checkpoint"], "random": b["random"], "seed": seed}
        run = {"batch_size": b["batch_size"], "device": b["device"], "bf16": False}
    else:
        e = params["encodec"]
        encoder = {"checkpoint": e["checkpoint"], "random": e["random"], "seed": seed, "bandwidth": e["bandwidth"]}
        run = {"batch_size": 1, "device": e["device"], "bf16": False}  # EnCodec encodes clip by clip
    features = {"type": etype, "encoder": encoder, **run}

    if etype == "beats_rvq":
        r = params["rvq"]
        codebooks = {"fit": True, "max_layers": r["max_layers"], "codebook_size": r["codebook_size"], "kmeans": r["kmeans"]}
        tokenize = {"type": etype, "layers": r["layers"]}
    else:
        codebooks = {"fit": False, "reason": f"encoder.type={etype} produces its own discrete codes; rvq.* does not apply"}
        tokenize = {"type": etype}
    return {"decode": decode, "features": features, "codebooks": codebooks, "tokenize": tokenize}


def write_configs(params: dict[str, Any], out_dir: Path = CONFIG_DIR) -> None:
    """Write ``{out_dir}/{stage}.json`` (sorted keys: same settings, same bytes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stage, cfg in resolve(params).items():
        text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
        path = out_dir / f"{stage}.json"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


def read_config(stage: str, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    path = config_dir / f"{stage}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the configure stage first (dvc repro configure)")
    return json.loads(path.read_text())
