"""Resolve ``params.yaml`` into the settings each token-producing stage actually uses.

Why a stage for this: which keys matter depends on ``encoder.type``. Under ``beats_rvq`` (and
``hubert_rvq``) the codebook fit reads ``rvq.max_layers``/``rvq.codebook_size``/``rvq.kmeans.*``
and tokenisation reads ``rvq.layers``; under ``beats_tokenizer``, ``encodec`` or
``speechtokenizer`` the codes come straight from the encoder and no ``rvq.*`` key applies. DVC's ``params:`` lists are static, so a stage that listed
``rvq.layers`` would rerun under ``encodec`` whenever it changed. Instead the cheap ``configure``
stage (no torch import, well under a second) lists every such key and writes one small JSON per
stage holding only what applies; the stages depend on those files. When an inapplicable key
changes, ``configure`` rewrites byte-identical files and DVC reruns nothing downstream.

What applies to each ``encoder.type`` is its entry in :mod:`clapart_core.encoders.registry`; the
stages read their file with :func:`clapart_core.pipeline.params.read_config`, which does not
import the registry (so decode and codebooks do not depend on every encoder's code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clapart_core.encoders.registry import CLAP_SAMPLE_RATE, TokenType, token_type
from clapart_core.pipeline.params import CONFIG_DIR, DATA_SOURCES, phase_params


def _token_type(params: dict[str, Any]) -> TokenType:
    try:
        return token_type(params["encoder"]["type"])
    except ValueError as err:
        raise ValueError(f"params.yaml: {err}") from None


def resolve(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``params`` -> ``{"decode": ..., "features": ..., "codebooks": ..., "tokenize": ...}``.

    What applies to each token type is its registry entry's (:mod:`clapart_core.encoders.registry`):
    the rate its encoder reads, its encoder settings, and whether its codes come from RVQ codebooks.
    """
    kind = _token_type(params)
    rates = {kind.sample_rate, CLAP_SAMPLE_RATE}
    decode = {"sample_rates": sorted(rates), "max_seconds": params["decode"]["max_seconds"], "on_error": params["decode"]["on_error"]}
    features = kind.features_config(params)
    if kind.codebooks:
        r = params["rvq"]
        codebooks = {"fit": True, "max_layers": r["max_layers"], "codebook_size": r["codebook_size"], "kmeans": r["kmeans"]}
        tokenize = {"type": kind.name, "layers": r["layers"]}
    else:
        codebooks = {"fit": False, "reason": f"encoder.type={kind.name} produces its own discrete codes; rvq.* does not apply"}
        tokenize = {"type": kind.name}
    return {"decode": decode, "features": features, "codebooks": codebooks, "tokenize": tokenize}


def write_configs(params: dict[str, Any], out_dir: Path = CONFIG_DIR) -> None:
    """Write ``{out_dir}/{stage}.json`` (sorted keys: same settings, same bytes); stages read them
    with :func:`clapart_core.pipeline.params.read_config`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stage, cfg in resolve(params).items():
        text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
        path = out_dir / f"{stage}.json"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


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
    try:
        kind = _token_type(params)
    except ValueError as err:
        raise PreflightError(str(err)) from None
    try:  # the type's own settings (e.g. hubert.layer), as its registry entry checks them
        kind.check(params)
    except ValueError as err:
        raise PreflightError(f"params.yaml: {err}") from None
    files: list[tuple[str, str | None, str]] = []
    hub: list[tuple[str, str | None, str]] = []
    for key, value in kind.model_files(params):  # what the type's encoder loads, per its registry entry
        (files if kind.checkpoint == "file" else hub).append((key, value, kind.checkpoint_hint))
    hub.append(("clap.checkpoint", params["clap"]["checkpoint"], "laion/clap-htsat-fused"))
    hub.append(("model.pretrained", params["model"]["pretrained"], "facebook/bart-base"))
    hub.append(("model.tokenizer", params["model"]["tokenizer"], "facebook/bart-base"))
    notes = []
    for key, path, where in files:
        if path and not Path(path).is_file():
            raise PreflightError(f"params.yaml: {key} = {path!r} does not exist; download {where} or set it to null for a random encoder")
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
    try:
        data = phase_params(params, phase)["data"]
    except ValueError as err:
        raise PreflightError(str(err)) from None
    where = f"params.yaml: finetune.{phase}.data"
    if data["source"] not in DATA_SOURCES:
        raise PreflightError(f"{where}.source = {data['source']!r} is not one of {', '.join(DATA_SOURCES)}")
    if data["source"] != "demo" and not data.get("download") and not Path(data["root"]).is_dir():
        raise PreflightError(f"{where}.root = {data['root']!r} is not a folder (set download: true to fetch {data['source']})")
