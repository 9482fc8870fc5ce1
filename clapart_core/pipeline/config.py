"""Resolve ``params.yaml`` into the settings each token-producing stage actually uses.

Why a stage for this: which keys matter depends on ``encoder.type``. Under ``beats_rvq`` the
codebook fit reads ``rvq.max_layers``/``rvq.codebook_size``/``rvq.kmeans.*`` and tokenisation
reads ``rvq.layers``; under ``beats_tokenizer`` or ``encodec`` the codes come straight from the
encoder and no ``rvq.*`` key applies. DVC's ``params:`` lists are static, so a stage that listed
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
    files: list[tuple[str, str | None, str]] = []
    hub: list[tuple[str, str | None, str]] = []
    encoder = (f"{kind.section}.checkpoint", params[kind.section]["checkpoint"], kind.checkpoint_hint)
    (files if kind.checkpoint == "file" else hub).append(encoder)
    hub.append(("clap.checkpoint", params["clap"]["checkpoint"], "laion/clap-htsat-fused"))
    hub.append(("model.pretrained", params["model"]["pretrained"], "facebook/bart-base"))
    hub.append(("model.tokenizer", params["model"]["tokenizer"], "facebook/bart-base"))
    _check_token_settings(params, kind)
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


def _check_token_settings(params: dict[str, Any], kind: TokenType) -> None:
    """Settings whose mistake would otherwise show only hours later, in ``features`` or ``train``."""
    max_frames = params["model"]["max_frames"]
    if kind.freq_patches > 1 and max_frames % kind.freq_patches:
        raise PreflightError(
            f"params.yaml: model.max_frames = {max_frames} is not a multiple of {kind.freq_patches}, the codes per time step of "
            f"{kind.name} tokens, so training crops would break their time-frequency grid; use {max_frames // kind.freq_patches * kind.freq_patches}"
        )
    if "layer" in kind.spec_keys:
        layer = params[kind.section]["layer"]
        random_depth = (params[kind.section]["random"] or {}).get("encoder_layers", 12)  # 12: BEATs' default depth
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
            raise PreflightError(f"params.yaml: {kind.section}.layer = {layer!r} must be a layer number (1 = the first) or null for the last layer")
        if layer is not None and not params[kind.section]["checkpoint"] and layer > random_depth:
            raise PreflightError(
                f"params.yaml: {kind.section}.layer = {layer} but the random BEATs has {random_depth} layers ({kind.section}.random.encoder_layers)"
            )


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
