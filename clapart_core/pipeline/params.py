"""Reading ``params.yaml`` (the one place every stage's settings come from), overlaying params
(:func:`merge_params`: fine-tuning phases, test and bench profiles, model defaults), the names
every stage shares (:data:`SPLITS`, :data:`DATA_SOURCES`) and where each training phase keeps
its artifacts (:class:`Workspace`), and how every stage starts and reports a user's mistake
(:func:`run_stage`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from clapart_core.pipeline.errors import DEBUG_ENV, MissingInputError, ParamsError, debug_requested, user_errors

#: the corpus splits, in the order every stage walks them (one artifact file per split)
SPLITS: tuple[str, str, str] = ("train", "val", "test")
#: the sections of a ``finetune.NAME`` entry, overlaid on the top-level ones: the fine-tuning
#: corpus and its training recipe. Both are required (``train: {}`` keeps the first phase's
#: recipe) because dvc.yaml tracks each one as a param of its own stages, so a recipe change
#: reruns only the fine-tune. The encoder, codebooks and captioner architecture are those of the
#: model being fine-tuned, so nothing else can change.
FINETUNE_SECTIONS = ("data", "train")

#: where the codebook-corpus chain (params ``codebook_corpus``: the cb_* stages of dvc.yaml) keeps
#: its corpus, audio and features, and the file each of its outputs holds when no such corpus is
#: set (``codebook_corpus.source: null``): the chain then does nothing and ``codebooks`` fits on
#: the training split
CODEBOOK_CORPUS_DIR = Path("data/codebook_corpus")
UNUSED_MARKER = "unused.txt"

#: the values of ``data.source``: the synthetic demo, a folder of CSVs, Clotho or AudioCaps (the
#: readers are in clapart_core/corpus/sources.py); here, with the dataset versions those readers
#: know, so that the params schema (clapart_core/pipeline/schema.py) names them without the corpus code
DATA_SOURCES: tuple[str, ...] = ("demo", "folder", "clotho", "audiocaps")
CLOTHO_VERSIONS: tuple[str, ...] = ("v1", "v2", "v2.1")
AUDIOCAPS_VERSIONS: tuple[str, ...] = ("v1", "v2")

#: the settings configure resolves for each token stage (clapart_core/pipeline/config.py)
CONFIG_DIR = Path("data/config")


def load_params(path: Path | str = "params.yaml") -> dict[str, Any]:
    """Parse ``params.yaml`` into nested dicts (``yaml.safe_load``: no object construction).

    Raises:
        MissingInputError: no such file (not run from the project root).
        ParamsError: not YAML, or not a mapping of sections.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found: run clapart stages from the project root (the folder with dvc.yaml)")
    try:
        with path.open() as f:
            params = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of parameter sections")
    return params


def read_config(stage: str, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The settings the configure stage resolved for ``stage`` (``{config_dir}/{stage}.json``).

    It lives here, not beside :func:`clapart_core.pipeline.config.resolve`, because ``resolve``
    asks the encoder registry: a stage that only reads its settings (decode, codebooks) then
    does not import every encoder.
    """
    path = config_dir / f"{stage}.json"
    if not path.is_file():
        raise MissingInputError(f"{path} is missing: run the configure stage first (dvc repro configure)")
    return json.loads(path.read_text())


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; anything else is returned as given."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but no CUDA GPU is visible to torch")
    return name


@dataclass(frozen=True)
class Workspace:
    """The artifact paths of one training phase (all relative to the project root).

    The main run (``phase`` None) lives in ``data/``, ``metrics/`` and ``dvclive/``. A fine-tuning
    phase ``NAME`` (params ``finetune.NAME``; the paper fine-tunes its AudioCaps model on Clotho)
    runs the corpus -> tokens chain on its own corpus into ``data/finetune/NAME/`` and trains
    from ``data/model``. Every phase shares ``data/config`` (the encoder settings) and
    ``data/codebooks``: a fine-tuned model must read tokens from the codebooks it learned.
    """

    phase: str | None = None
    #: the codebook corpus (params ``codebook_corpus``): only corpus, audio and features are used
    codebook_corpus: bool = False

    @property
    def root(self) -> Path:
        if self.codebook_corpus:
            return CODEBOOK_CORPUS_DIR
        return Path("data") if self.phase is None else Path("data/finetune") / self.phase

    @property
    def metrics(self) -> Path:
        if self.codebook_corpus:
            return Path("metrics/codebook_corpus")
        return Path("metrics") if self.phase is None else Path("metrics/finetune") / self.phase

    @property
    def live(self) -> Path:
        return Path("dvclive") if self.phase is None else Path("dvclive/finetune") / self.phase

    @property
    def manifest(self) -> Path:
        return self.root / "corpus/manifest.parquet"

    @property
    def audio(self) -> Path:
        return self.root / "audio"

    @property
    def encoder_features(self) -> Path:
        return self.root / "features/encoder"

    @property
    def clap_features(self) -> Path:
        return self.root / "features/clap"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def resume(self) -> Path:
        """Shards of a killed features/clap run (clapart_core/pipeline/resume.py); not a DVC output, so kept."""
        return self.root / ".resume"

    @property
    def checkpoints(self) -> Path:
        """Training checkpoints for ``train.resume`` (a DVC ``persist`` output)."""
        return self.root / "checkpoints/train"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def init_model(self) -> Path | None:
        """The model this phase starts from: None for the main run, ``data/model`` for a fine-tune."""
        return None if self.phase is None else Path("data/model")


def merge_params(base: Mapping[str, Any], overlay: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in recursively, as new plain dicts (neither is modified).

    Mappings merge key by key; anything else in ``overlay`` wins, lists whole (never merged
    item by item) and ``None`` included. Keys keep ``base``'s order, new ones follow. Values
    are kept as given (``allow_objects``: a YAML date stays a date; tuples become lists). A
    mapping and a list under one key cannot be merged: that raises ``ParamsError`` (a ``ValueError``).
    """
    flags = {"allow_objects": True}
    try:
        merged = OmegaConf.merge(OmegaConf.create(dict(base), flags=flags), OmegaConf.create(dict(overlay or {}), flags=flags))
    except OmegaConfBaseException as err:
        raise ParamsError(f"cannot overlay these params ({' '.join(str(err).split())})") from None
    return OmegaConf.to_container(merged)


def phase_params(params: dict[str, Any], phase: str | None) -> dict[str, Any]:
    """The params a stage of ``phase`` runs with: the top level, overlaid by ``finetune.<phase>``.

    Raises:
        ParamsError: the phase is not under ``finetune``, or its entry overrides a section that a
            fine-tune cannot change (see :data:`FINETUNE_SECTIONS`).
    """
    if phase is None:
        return params
    phases = params.get("finetune") or {}
    if phase not in phases:
        raise ParamsError(f"params.yaml: no finetune.{phase} entry (phases: {', '.join(phases) or 'none'})")
    overlay = phases[phase] or {}
    bad = sorted(set(overlay) - set(FINETUNE_SECTIONS))
    if bad:
        raise ParamsError(
            f"params.yaml: finetune.{phase} may hold only {', '.join(FINETUNE_SECTIONS)}, not {', '.join(bad)} "
            "(the encoder, codebooks and captioner are those of the model being fine-tuned)"
        )
    missing = [key for key in FINETUNE_SECTIONS if not isinstance(overlay.get(key), dict)]
    if missing:
        raise ParamsError(f"params.yaml: finetune.{phase} needs a mapping for {', '.join(missing)} (`train: {{}}` keeps the first phase's recipe)")
    return merge_params(params, overlay)


def codebook_corpus_params(params: dict[str, Any]) -> dict[str, Any] | None:
    """The params the codebook-corpus chain runs with: ``data`` overlaid by ``codebook_corpus``
    (its ``source`` and ``root``, and any other ``data.*`` key it names); None when
    ``codebook_corpus.source`` is null (the codebooks are fitted on the training split)."""
    overlay = params.get("codebook_corpus") or {}
    if overlay.get("source") is None:
        return None
    return {**params, "data": merge_params(params["data"], overlay)}


def codebook_corpus_unused(upstream: Path) -> bool:
    """True if the codebook-corpus stage before this one found no codebook corpus set (it left
    :data:`UNUSED_MARKER` in its output ``upstream``)."""
    return (upstream / UNUSED_MARKER).is_file()


def mark_unused(out: Path) -> None:
    """Make ``out`` (a codebook-corpus stage's output folder) hold only :data:`UNUSED_MARKER`.

    Cheap and deterministic (same bytes every time), so with ``codebook_corpus.source: null`` the
    cb_* stages cost nothing and never make the codebooks stage rerun."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / UNUSED_MARKER).write_text("codebook_corpus.source is null: the codebooks are fitted on the training split\n")


def run_stage(name: str, main: Callable[[dict[str, Any], Workspace], None], path: Path | str = "params.yaml", argv: list[str] | None = None) -> None:
    """Run a DVC stage: the common start and end of every ``stages/*.py``.

    Logs to stderr with timestamps, reads the params and calls ``main(params, workspace)``.
    ``--phase NAME`` on the command line (the ``ft_*`` stages of dvc.yaml) selects a fine-tuning
    phase: the params come overlaid by ``finetune.NAME`` and the paths are that phase's (see
    [`Workspace`]); ``--codebook-corpus`` (the ``cb_*`` stages) the codebook corpus: its paths,
    and ``data`` overlaid by ``codebook_corpus`` (:func:`codebook_corpus_params`). A user error (bad params, a bad corpus, a missing file, a full or read-only
    disk: :mod:`clapart_core.pipeline.errors`) ends the stage with one line, ``error: <what>
    (stage NAME)``, and exit code 2; ``--debug`` or ``CLAPART_DEBUG=1`` shows its traceback.
    """
    import logging
    import sys

    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--phase", default=None, help="a finetune.NAME entry of params.yaml")
    parser.add_argument("--codebook-corpus", action="store_true", help="the codebook corpus (params codebook_corpus), not the training corpus")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of a user error (or set {DEBUG_ENV}=1)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    label = name if args.phase is None else f"{name}@{args.phase}"
    label = f"{label}@codebook_corpus" if args.codebook_corpus else label
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {label} %(name)s: %(message)s", datefmt="%H:%M:%S")
    with user_errors(f"stage {label}", debug=args.debug or debug_requested([])):
        params = phase_params(load_params(path), args.phase)
        if args.codebook_corpus:
            params = codebook_corpus_params(params) or params
        main(params, Workspace(args.phase, codebook_corpus=args.codebook_corpus))
