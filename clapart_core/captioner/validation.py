"""Per-epoch validation and the choice of the epoch ``data/model`` holds (``train.select_by``, ``train.keep_best``).

EnCLAP's authors choose the epoch by validation SPIDEr (its training script beam-searches the
validation split after every epoch and scores it; they evaluate the 5 best epochs). Here, after
each epoch, the loop computes the validation caption loss (always) and, given a
:class:`ValScorer`, beam-searches the validation split with the score stage's settings
(:func:`clapart_core.captioner.generate.caption_examples`, batched) and scores the captions.
Selection ranks the epochs by ``select_by`` (a score: higher is better; ``loss``: lower is
better; ties go to the earlier epoch) and keeps the ``max(keep_best, 1)`` best.

Why a scorer is handed in: the captioner does not import ``scoring/`` (it comes later in the
figure's order, and the metrics pull Java and aac-metrics). The train stage builds the scorer with
:func:`clapart_core.scoring.metrics.validation_scorer`, which computes only what selection needs
(CIDEr-D; SPICE too for SPIDEr; never METEOR) and says when SPIDEr falls back to CIDEr-D.

Several processes (``train.num_processes``): the batches of the loss and of the beam search are
the 1-process ones, dealt round robin to the ranks; the per-batch results are gathered back and
put in order, so there are no duplicates (the padding EnCLAP's authors warn about under DDP does
not arise: nothing is padded to equal shares, unlike accelerate's ``gather_for_metrics``, which
exists to drop such padding) and the loss and the captions are the 1-process ones. Rank 0 scores
them and sends the metrics to every rank, so all ranks select the same epochs.

Validation keeps the paper's plain beam search whatever ``generate.rerank`` says: reranking
(:mod:`clapart_core.captioner.rerank`) is a decoding choice the score stage applies to the model
that validation selected, so the epoch choice (and ``data/model``) does not change with it, and
the train stage does not depend on the rerank keys.

Determinism: beam search draws no random numbers and runs in eval mode; it also runs inside
``torch.random.fork_rng``, so that nothing it calls can move the global RNG that dropout draws
from: a run that validates by captions trains bitwise as one that does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from clapart_core.captioner.data import CaptionExample, build_batch
from clapart_core.captioner.distributed import Dist
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model import ClapArtForCaptioning

#: ``train.select_by`` values: the paper's metric (SPIDEr), CIDEr-D, or the validation caption loss
SELECT_BY = ("spider", "cider_d", "loss")

#: (predicted captions, reference captions per clip) -> {metric: value or None}; higher is better
CaptionScorer = Callable[[list[str], list[list[str]]], Mapping[str, float | None]]
Autocast = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class ValScorer:
    """Scores validation captions for epoch selection.

    Attributes:
        score: captions -> metric values; its result holds at least ``metric``.
        metric: the key of ``score``'s result that selection ranks by when ``train.select_by`` is
            not ``loss``: ``select_by`` itself, or ``cider_d`` where ``spider`` was asked for and
            SPICE cannot run.
        note: why ``metric`` differs from ``train.select_by`` (recorded in the training summary), else None.
    """

    score: CaptionScorer
    metric: str
    note: str | None = None


@torch.no_grad()
def evaluate_loss(
    model: ClapArtForCaptioning,
    examples: Sequence[CaptionExample],
    caption_ids: Sequence[Sequence[Sequence[int]]],
    *,
    batch_size: int,
    device: torch.device,
    autocast: Autocast,
    dist: Dist | None = None,
) -> float:
    """Mean caption loss (label-smoothed, no MCM, first-frames crop) over all (clip, caption) pairs.

    ``dist``: several processes share the batches (each computes every ``world``-th one); the
    per-batch sums are added in batch order, so the mean is the 1-process one.
    """
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    pairs = [(i, j) for i, ids in enumerate(caption_ids) for j in range(len(ids))]
    parts: list[tuple[int, float, int]] = []  # (first pair, loss x pairs, pairs) per batch
    for start in dist.shard(range(0, len(pairs), batch_size)):
        chunk = pairs[start : start + batch_size]
        batch = build_batch(
            [examples[i] for i, _ in chunk],
            max_frames=model.config.max_codes,
            use_clap=model.config.use_clap,
            crop_generator=None,
            caption_ids=[caption_ids[i][j] for i, j in chunk],
        ).to(device)
        with autocast():
            out = model(batch.codes, batch.frame_mask, batch.clap, labels=batch.labels)
        parts.append((start, float(out.caption_loss) * len(chunk), len(chunk)))
    model.train(was_training)
    total, count = 0.0, 0
    for _, loss_sum, n in sorted(part for rank_parts in dist.gather(parts) for part in rank_parts):
        total += loss_sum
        count += n
    return total / max(count, 1)


def _caption_shared(
    model: ClapArtForCaptioning, tokenizer: PreTrainedTokenizerBase, examples: Sequence[CaptionExample], generate: Mapping[str, Any], dist: Dist
) -> list[str]:
    """Beam-search captions of ``examples``, the batches dealt round robin to the ranks; every rank gets all.

    The batches are :func:`caption_examples`' own (its length order, ``generate["batch_size"]``
    clips): a rank's batches, concatenated, are already in that order, so it batches them alike.
    """
    if dist.world == 1:
        return caption_examples(model, tokenizer, examples, **generate)
    max_frames = model.config.max_frames
    order = sorted(range(len(examples)), key=lambda i: min(len(examples[i].codes), max_frames))
    size = int(generate.get("batch_size", 32))
    mine = [i for start in dist.shard(range(0, len(order), size)) for i in order[start : start + size]]
    texts = caption_examples(model, tokenizer, [examples[i] for i in mine], **generate) if mine else []
    captions: list[str] = [""] * len(examples)
    for indices, rank_texts in dist.gather((mine, texts)):
        for i, text in zip(indices, rank_texts, strict=True):
            captions[i] = text
    return captions


def validate(
    model: ClapArtForCaptioning,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[CaptionExample],
    caption_ids: Sequence[Sequence[Sequence[int]]],
    *,
    scorer: ValScorer | None,
    generate: Mapping[str, Any],
    batch_size: int,
    device: torch.device,
    autocast: Autocast,
    dist: Dist | None = None,
) -> tuple[dict[str, float | None], dict[str, float]]:
    """One epoch's validation: ``({"loss": …, <scores>…}, {"loss": s, "decode": s, "score": s})``.

    ``generate``: :func:`caption_examples` keyword arguments (params ``generate``). Without a
    scorer only the loss is computed (``decode`` and ``score`` take 0 s). ``dist``: several
    processes share the work (see the module docstring); every rank returns rank 0's metrics.
    """
    dist = dist or Dist()
    t0 = time.perf_counter()
    metrics: dict[str, float | None] = {
        "loss": evaluate_loss(model, examples, caption_ids, batch_size=batch_size, device=device, autocast=autocast, dist=dist)
    }
    t1 = t2 = time.perf_counter()
    if scorer is not None:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the training RNG must not see validation
            captions = _caption_shared(model, tokenizer, examples, generate, dist)
        t2 = time.perf_counter()
        if dist.is_main:
            scores = scorer.score(captions, [list(ex.captions) for ex in examples])
            metrics.update({k: None if v is None else float(v) for k, v in scores.items()})
        metrics = dist.broadcast(metrics)
    t3 = time.perf_counter()
    return metrics, {"loss": t1 - t0, "decode": t2 - t1, "score": t3 - t2}


def rank_epochs(history: Sequence[Mapping[str, Any]], metric: str) -> list[int]:
    """1-based epochs of ``history`` (one record per epoch, with ``epoch`` and ``metric``), best first.

    ``loss`` ranks low first, every other metric high first; a missing or None value ranks last;
    ties go to the earlier epoch (so a run is never chosen for being later).
    """

    def key(record: Mapping[str, Any]) -> tuple[float, int]:
        value = record.get(metric)
        if value is None or not math.isfinite(value):
            return (math.inf, record["epoch"])
        return (value if metric == "loss" else -value, record["epoch"])

    return [record["epoch"] for record in sorted(history, key=key)]


def kept_epochs(history: Sequence[Mapping[str, Any]], metric: str, keep_best: int) -> list[int]:
    """The epochs whose weights are kept, best first: the ``max(keep_best, 1)`` best (the best is
    always kept: ``data/model`` holds it).

    An epoch that is not among them when it ends can never be later (later epochs only push it
    down), so this is always a subset of the epochs snapshotted so far.
    """
    return rank_epochs(history, metric)[: max(int(keep_best), 1)]
