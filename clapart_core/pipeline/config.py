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
from clapart_core.pipeline.atomic import write_files
from clapart_core.pipeline.errors import UserError
from clapart_core.pipeline.params import CONFIG_DIR, codebook_corpus_params, phase_params
from clapart_core.pipeline.resume import file_digest
from clapart_core.pipeline.schema import validate_params


def resolve(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``params`` -> ``{"decode": ..., "features": ..., "codebooks": ..., "tokenize": ...}``.

    What applies to each token type is its registry entry's (:mod:`clapart_core.encoders.registry`):
    the rate its encoder reads, its encoder settings, and whether its codes come from RVQ codebooks.
    """
    kind = token_type(params["encoder"]["type"])
    rates = {kind.sample_rate, CLAP_SAMPLE_RATE}
    decode = {"sample_rates": sorted(rates), "max_seconds": params["decode"]["max_seconds"], "on_error": params["decode"]["on_error"]}
    features = kind.features_config(params)
    if kind.codebooks:
        r = params["rvq"]
        codebooks = {
            "fit": True, "max_layers": r["max_layers"], "codebook_size": r["codebook_size"], "kmeans": r["kmeans"],
            "codebooks_file": _codebooks_file(r["codebooks_file"]), "corpus": _codebook_corpus(params["codebook_corpus"]),
        }
        tokenize = {"type": kind.name, "layers": r["layers"]}
    else:
        codebooks = {"fit": False, "reason": f"encoder.type={kind.name} produces its own discrete codes; rvq.* does not apply"}
        tokenize = {"type": kind.name}
    return {"decode": decode, "features": features, "codebooks": codebooks, "tokenize": tokenize}


def _codebooks_file(path: str | None) -> dict[str, str] | None:
    """``rvq.codebooks_file`` with its content's sha256: a file replaced under the same name
    changes ``codebooks.json``, so the codebooks stage reruns (DVC cannot list it as a dep)."""
    return None if path is None else {"path": path, "sha256": file_digest(path)}


def _codebook_corpus(section: dict[str, Any]) -> dict[str, Any] | None:
    """What ``codebooks`` is told of the codebook corpus (None: fit on the training split); the
    cb_* stages read the rest of the section themselves."""
    return None if section["source"] is None else {"source": section["source"], "root": section["root"]}


def write_configs(params: dict[str, Any], out_dir: Path = CONFIG_DIR) -> None:
    """Write ``{out_dir}/{stage}.json`` (sorted keys: same settings, same bytes); stages read them
    with :func:`clapart_core.pipeline.params.read_config`.

    All or nothing: every file is resolved and written under a temporary name before any is
    renamed into place (:func:`clapart_core.pipeline.atomic.write_files`), so a failure (a bad
    setting, a full or read-only disk) leaves the previous set whole. Unchanged files are not
    rewritten, so the stages that read them do not rerun.
    """
    texts = {stage: json.dumps(cfg, indent=2, sort_keys=True) + "\n" for stage, cfg in resolve(params).items()}
    write_files({Path(out_dir) / f"{stage}.json": text.encode() for stage, text in texts.items()})


def configure(params: dict[str, Any], out_dir: Path = CONFIG_DIR) -> list[str]:
    """The configure stage: validate the whole of ``params`` (:mod:`clapart_core.pipeline.schema`,
    every fine-tuning phase included), check that what it names exists (:func:`preflight`), then
    write the settings of each token stage (:func:`write_configs`). Returns the preflight's notes.

    Raises:
        ParamsError, PreflightError: one line naming the key and the problem; nothing is written.
    """
    validate_params(params)
    notes = preflight(params)
    write_configs(params, out_dir)
    return notes


class PreflightError(UserError, ValueError):
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


def _local_config(name: str) -> dict[str, Any] | None:
    """The ``config.json`` of a model directory or a cached hub model; None if it is not here."""
    path: Path | str | None = Path(name) / "config.json"
    if not Path(name).is_dir():
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        try:
            path = try_to_load_from_cache(name, "config.json")
        except HFValidationError:
            return None
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # loading it will say what is wrong


def preflight(params: dict[str, Any]) -> list[str]:
    """Check, in well under a second, that every model and corpus the run will read exists.

    Local checkpoint files must exist; hub ids must be a local directory or in the HF cache when
    offline (``HF_HUB_OFFLINE=1``); online, an uncached id is reported as "will be downloaded".
    A pretrained BART must have positions for ``model.max_frames`` (when its config is here);
    the corpus root of every phase must be a folder (unless generated or downloaded).
    Raises :class:`PreflightError` (one line) on the first problem; returns notes.
    """
    kind = token_type(params["encoder"]["type"])  # a known type: validate_params checked it
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
    _check_positions(params["model"])
    _check_corpus_root(params["data"], "params.yaml: data")
    _check_codebook_source(params, kind)
    for phase in params.get("finetune") or {}:
        _check_corpus_root(phase_params(params, phase)["data"], f"params.yaml: finetune.{phase}.data")
    return notes


def _check_positions(model: dict[str, Any]) -> None:
    """``<s>``, ``model.max_frames`` frames and ``</s>`` must fit a pretrained BART's positions.

    (A BART built from scratch is given enough; a pretrained one not cached yet is checked when
    it is loaded.)
    """
    if not model["pretrained"]:
        return
    config = _local_config(model["pretrained"])
    positions = (config or {}).get("max_position_embeddings")
    if isinstance(positions, int) and model["max_frames"] + 2 > positions:
        raise PreflightError(
            f"params.yaml: model.max_frames = {model['max_frames']} needs {model['max_frames'] + 2} positions (with <s> and </s>) "
            f"but model.pretrained = {model['pretrained']!r} has {positions}; set model.max_frames <= {positions - 2}"
        )


def _check_corpus_root(data: dict[str, Any], where: str) -> None:
    """A corpus root must be a folder, unless the corpus stage makes it (the demo, a download)."""
    if data["source"] != "demo" and not data["download"] and not Path(data["root"]).is_dir():
        hint = f" (or set download: true to fetch {data['source']})" if data["source"] in ("clotho", "audiocaps") else ""
        raise PreflightError(f"{where}.root = {data['root']!r} is not a folder{hint}")


def _check_codebook_source(params: dict[str, Any], kind: TokenType) -> None:
    """``codebook_corpus`` and ``rvq.codebooks_file``: one source of codebooks at most, only for
    token types that have codebooks, naming what exists."""
    corpus, file = params["codebook_corpus"], params["rvq"]["codebooks_file"]
    if corpus["source"] is None and file is None:
        return
    what = "codebook_corpus.source" if corpus["source"] is not None else "rvq.codebooks_file"
    if not kind.codebooks:
        raise PreflightError(f"params.yaml: {what} is set but encoder.type = {kind.name} produces its own codes and fits no codebooks; set it to null")
    if corpus["source"] is not None and file is not None:
        raise PreflightError("params.yaml: codebook_corpus.source and rvq.codebooks_file are both set; codebooks come from one, set the other to null")
    if file is not None and not Path(file).is_file():
        raise PreflightError(f"params.yaml: rvq.codebooks_file = {file!r} does not exist")
    if corpus["source"] is not None:
        if Path(corpus["root"]).resolve() == Path(params["data"]["root"]).resolve():
            raise PreflightError(
                f"params.yaml: codebook_corpus.root = {corpus['root']!r} is data.root; leave codebook_corpus.source null to fit on the training split"
            )
        data = (codebook_corpus_params(params) or params)["data"]
        _check_corpus_root(data, "params.yaml: codebook_corpus")


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

