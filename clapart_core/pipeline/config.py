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


class PreflightError(ValueError):
    """A setting names a model or file that is not there; raised before any long stage starts."""


def _hub_model_available(name: str) -> bool | None:
    """True if ``name`` is a local model dir or in the Hugging Face cache; None if only the hub could tell."""
    if Path(name).is_dir():
        return (Path(name) / "config.json").is_file() or (Path(name) / "tokenizer.json").is_file()
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    for filename in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(name, filename), str):
                return True
        except HFValidationError:  # not a hub id either: a local path that does not exist
            return False
    return False if constants.HF_HUB_OFFLINE else None


def preflight(params: dict[str, Any]) -> list[str]:
    """Check, in well under a second, that every model the run will load exists.

    Local checkpoint files must exist; hub ids must be a local directory or in the HF cache when
    offline (``HF_HUB_OFFLINE=1``); online, an uncached id is reported as "will be downloaded".
    Raises :class:`PreflightError` (one line) on the first missing model; returns notes.
    """
    etype = params["encoder"]["type"]
    files: list[tuple[str, str | None]] = []
    hub: list[tuple[str, str | None, str]] = []
    if etype == "beats_rvq":
        files.append(("beats.checkpoint", params["beats"]["checkpoint"]))
    elif etype == "beats_tokenizer":
        files.append(("beats_tokenizer.checkpoint", params["beats_tokenizer"]["checkpoint"]))
    else:
        hub.append(("encodec.checkpoint", params["encodec"]["checkpoint"], "facebook/encodec_24khz"))
    hub.append(("clap.checkpoint", params["clap"]["checkpoint"], "laion/clap-htsat-fused"))
    hub.append(("model.pretrained", params["model"]["pretrained"], "facebook/bart-base"))
    hub.append(("model.tokenizer", params["model"]["tokenizer"], "facebook/bart-base"))
    notes = []
    for key, path in files:
        if path and not Path(path).is_file():
            raise PreflightError(
                f"params.yaml: {key} = {path!r} does not exist; download the official checkpoint "
                "(microsoft/unilm on GitHub, beats/ README) or set it to null for a random encoder"
            )
    for key, name, example in hub:
        if not name:
            continue
        found = _hub_model_available(name)
        if found is False:
            raise PreflightError(
                f"params.yaml: {key} = {name!r} is neither a local model directory nor in the Hugging Face cache "
                f"and the hub is offline; run `hf download {name}` on a machine with internet (e.g. {example})"
            )
        if found is None:
            notes.append(f"{key} = {name!r} is not cached: it will be downloaded")
    for phase in params.get("finetune") or {}:
        _check_finetune_phase(params, phase)
    return notes


def _check_finetune_phase(params: dict[str, Any], phase: str) -> None:
    """A ``finetune.NAME`` entry must be a valid overlay whose corpus root exists (or is downloaded)."""
    from clapart_core.pipeline.params import DATA_SOURCES as SUPPORTED_SOURCES
    from clapart_core.pipeline.params import phase_params

    try:
        data = phase_params(params, phase)["data"]
    except ValueError as err:
        raise PreflightError(str(err)) from None
    where = f"params.yaml: finetune.{phase}.data"
    if data["source"] not in SUPPORTED_SOURCES:
        raise PreflightError(f"{where}.source = {data['source']!r} is not one of {', '.join(SUPPORTED_SOURCES)}")
    if data["source"] != "demo" and not data.get("download") and not Path(data["root"]).is_dir():
        raise PreflightError(f"{where}.root = {data['root']!r} is not a folder (set download: true to fetch {data['source']})")
