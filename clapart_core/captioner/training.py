"""Training the ART-token captioner: model and optimiser set-up, the training loop, resume.

Recipe (EnCLAP, see design.md): every (clip, caption) pair is one example; each batch draws a
random crop of at most ``max_frames`` encoder positions per clip (frames; time steps of
``freq_patches`` frames in the ``time`` token layout) and a fresh MCM mask; the loss is the
label-smoothed caption cross-entropy plus ``mcm_weight`` × the weighted MCM loss; AdamW with
weight decay by EnCLAP's name rule, gradient clipping, and transformers' inverse-square-root
schedule (linear warm-up, ``timescale``). Training crops of BEATs tokens start on the
time-frequency grid (multiples of the tokens' ``freq_patches``). After each epoch the validation
split is scored and the epoch that ``data/model`` holds is chosen by ``train.select_by``
(:mod:`clapart_core.captioner.validation`); the ``keep_best`` best epochs are kept too.

Reading order: :func:`train_captioner` -> :func:`_train` (the loop, top to bottom) and the small
pieces it calls: :func:`_prepare` (seeds, model, tokenizer, optimiser -> a :class:`_Run`),
:func:`_restore` (resume), :func:`_optimisation_step`, :func:`_close_window` (dvclive
``train/*``), :func:`_validate_and_select` (``val/*``, kept epochs), :func:`_save_checkpoint`.
What the loop changes lives in one :class:`LoopState`, which is what a checkpoint stores.

Determinism: the shuffle, the crops and the MCM masks each use their own ``torch.Generator``
seeded from ``seed``; weight initialisation and dropout use torch's global RNG, which
``train_captioner`` seeds with ``torch.manual_seed(seed)`` once at its start (documented side
effect). Same seed, same data, same thread count -> identical losses and weights on CPU.

Resume: with a ``checkpoint_dir`` the loop writes ``last.pt`` (see :mod:`clapart_core.captioner.train_state`)
at every epoch end and every ``checkpoint_every`` steps; with ``resume: true`` it continues from
a matching one, to bitwise the same result as the uninterrupted run.

Several processes (``train.num_processes``, launched by ``accelerate launch``): see
:mod:`clapart_core.captioner.distributed`. Each step is :func:`_backward_share` instead of
:func:`backward_batch` on the whole batch; rank 0 alone writes dvclive, checkpoints, epoch
snapshots and ``out_dir``. With 1 process none of it runs: the loop above is unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_inverse_sqrt_schedule

from clapart_core.captioner import distributed, train_state
from clapart_core.captioner.data import Batch, CaptionExample, build_batch, tokenize_captions
from clapart_core.captioner.model import IGNORE_INDEX, ClapArtConfig, ClapArtForCaptioning, small_bart_config
from clapart_core.captioner.model_dir import load_captioner, load_snapshot, save_captioner
from clapart_core.captioner.text import load_caption_tokenizer, train_caption_tokenizer
from clapart_core.captioner.validation import SELECT_BY, ValScorer, kept_epochs, validate
from clapart_core.pipeline.errors import ParamsError
from clapart_core.pipeline.params import resolve_device
from clapart_core.pipeline.storage import model_fingerprint

logger = logging.getLogger(__name__)

#: default number of optimiser steps between two ``train/*`` dvclive points
DEFAULT_LOG_EVERY = 10
#: the losses averaged over a logging window, in the order they are logged
LOSS_NAMES = ("loss", "caption_loss", "mcm_loss")

Autocast = Callable[[], AbstractContextManager[Any]]


# ---------------------------------------------------------------------------- building blocks


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, timescale: int | None) -> torch.optim.lr_scheduler.LambdaLR:
    """EnCLAP's schedule: transformers' own ``get_inverse_sqrt_schedule`` (not a re-implementation).

    Factor ``f(s) = s / warmup`` for ``s < warmup``, else ``1 / sqrt((s + timescale - warmup) / timescale)``;
    ``timescale`` None = transformers' default, the warm-up (10,000 when there is none).

    Step indexing (LambdaLR's): ``s`` is the number of optimiser steps already taken, so the
    k-th optimiser step (1-based) runs with ``f(k - 1)``. With a warm-up the first step therefore
    has lr 0, as in EnCLAP; EnCLAP's Clotho fine-tune (warm-up 0, timescale 1000) runs step 1 at
    the full lr, step 1000 at 0.707 and step 4500 at 0.426 of it.

    The schedule does not depend on the total step count (``train.epochs`` can be raised on resume).
    """
    return get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup_steps, timescale=timescale)


def make_tokenizer(model_params: dict, train: Sequence[CaptionExample]) -> PreTrainedTokenizerBase:
    """The caption tokenizer the params ask for.

    ``tokenizer`` set: load it (id or dir). Otherwise, with ``pretrained`` set: the pretrained
    BART's own tokenizer (its embeddings only make sense with it). Otherwise: train a byte-level
    BPE of ``vocab_size`` on the training captions.
    """
    if model_params.get("tokenizer"):
        return load_caption_tokenizer(model_params["tokenizer"])
    if model_params.get("pretrained"):
        return load_caption_tokenizer(model_params["pretrained"])
    captions = [c for ex in train for c in ex.captions]
    return train_caption_tokenizer(captions, int(model_params["vocab_size"]), out_dir=None)


class TokenLayoutError(ParamsError):
    """``model.token_layout: time`` on tokens without a frequency axis; the message is one sentence."""


def layout_kwargs(model_params: dict) -> dict:
    """The [`ClapArtConfig`] layout fields from params: ``token_layout`` (default flat),
    ``freq_patches`` (the tokens' metadata) and ``frequency_embedding``.

    Raises:
        TokenLayoutError: the time layout on tokens with one code per time step (EnCodec, HuBERT).
    """
    layout = str(model_params.get("token_layout") or "flat")
    patches = int(model_params.get("freq_patches") or 1)
    if layout == "time" and patches < 2:
        raise TokenLayoutError(
            f"params.yaml: model.token_layout = time needs tokens with a frequency axis (BEATs), but these tokens "
            f"have one code per time step (freq_patches {patches}); use flat"
        )
    return {
        "token_layout": layout,
        "freq_patches": patches if layout == "time" else 1,
        "frequency_embedding": str(model_params.get("frequency_embedding") or "tables"),
    }


def build_captioner(
    model_params: dict,
    train_params: dict,
    *,
    vocab_size: int,
    num_codebooks: int,
    clap_dim: int,
) -> ClapArtForCaptioning:
    """Instantiate the captioner from params (from a pretrained BART or a small config from scratch).

    Uses torch's global RNG for initialisation (seed it first).
    """
    if model_params.get("codebook_size") is None:
        raise ValueError("model_params needs codebook_size (K of the token codebooks, e.g. rvq.codebook_size)")
    head_kwargs = dict(
        num_codebooks=num_codebooks,
        codebook_size=int(model_params["codebook_size"]),
        use_clap=bool(model_params["use_clap"]),
        clap_dim=clap_dim,
        max_frames=int(model_params["max_frames"]),
        **layout_kwargs(model_params),
        mcm_prob=float(train_params["mcm_prob"]),
        mcm_span=int(train_params["mcm_span"]),
        mcm_weight=float(train_params["mcm_weight"]),
        label_smoothing=float(train_params["label_smoothing"]),
    )
    if model_params.get("pretrained"):
        model = ClapArtForCaptioning.from_bart(model_params["pretrained"], **head_kwargs)
        if model.bart.config.vocab_size != vocab_size:
            logger.warning(
                "resizing BART's vocabulary %d -> %d to match the caption tokenizer",
                model.bart.config.vocab_size,
                vocab_size,
            )
            model.bart.resize_token_embeddings(vocab_size)
            model.config.bart.vocab_size = vocab_size
        return model
    logger.warning("no pretrained BART given: the captioner is trained from random initialisation")
    bart_config = small_bart_config(
        vocab_size=vocab_size,
        d_model=int(model_params["d_model"]),
        encoder_layers=int(model_params["encoder_layers"]),
        decoder_layers=int(model_params["decoder_layers"]),
        attention_heads=int(model_params["attention_heads"]),
        ffn_dim=int(model_params["ffn_dim"]),
        dropout=float(model_params["dropout"]),
        max_frames=int(model_params["max_frames"]),
    )
    return ClapArtForCaptioning(ClapArtConfig(bart=bart_config, **head_kwargs))


def load_for_finetuning(
    model_dir: Path, model_params: dict, train_params: dict, *, num_codebooks: int
) -> tuple[ClapArtForCaptioning, PreTrainedTokenizerBase]:
    """A trained captioner and its tokenizer, ready to be fine-tuned on tokens of the same kind.

    Raises:
        FileNotFoundError: ``model_dir`` is not a trained captioner (the first phase has not run).
        ValueError: the new tokens do not fit the model (other codebook count or size), or
            ``use_clap`` differs from the model's.
    """
    model, tokenizer = load_captioner(model_dir)
    config = model.config
    if (config.num_codebooks, config.codebook_size) != (num_codebooks, int(model_params["codebook_size"])):
        raise ValueError(
            f"{model_dir} was trained on {config.num_codebooks} codebooks of {config.codebook_size} codes, "
            f"the fine-tuning tokens have {num_codebooks} of {model_params['codebook_size']}: "
            "tokenize the fine-tuning corpus with the first phase's encoder and codebooks"
        )
    if config.use_clap != bool(model_params["use_clap"]):
        raise ValueError(f"{model_dir} has use_clap={config.use_clap}, params say model.use_clap={model_params['use_clap']}")
    layout = layout_kwargs(model_params)
    if (config.token_layout, config.freq_patches) != (layout["token_layout"], layout["freq_patches"]):
        raise ValueError(
            f"{model_dir} has token_layout={config.token_layout} (freq_patches {config.freq_patches}), the fine-tuning "
            f"params and tokens say {layout['token_layout']} (freq_patches {layout['freq_patches']})"
        )
    # The fine-tuning recipe may change the auxiliary losses; the architecture stays.
    for key in ("mcm_prob", "mcm_span", "mcm_weight", "label_smoothing"):
        setattr(config, key, type(getattr(config, key))(train_params[key]))
    logger.info("fine-tuning %s", model_dir)
    return model, tokenizer


#: EnCLAP's rule: parameters whose names contain one of these are not decayed
NO_DECAY_NAME_PARTS = ("bias", "LayerNorm.weight", "layer_norm.weight")


def weight_decay_groups(model: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters ``(decayed, not decayed)`` by EnCLAP's rule.

    A name containing ``bias``, ``LayerNorm.weight`` or ``layer_norm.weight`` is not decayed;
    everything else is, including BART's ``layernorm_embedding.weight`` (its name matches none
    of the three, so EnCLAP decays it).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(part in name for part in NO_DECAY_NAME_PARTS) else decay).append(name)
    return decay, no_decay


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with EnCLAP's two groups (:func:`weight_decay_groups`), betas and eps as transformers' defaults."""
    params = dict(model.named_parameters())
    decay, no_decay = weight_decay_groups(model)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


@dataclass
class StepLosses:
    """The losses of one optimiser step (the whole batch's, also when it ran in slices)."""

    loss: torch.Tensor
    caption_loss: torch.Tensor
    mcm_loss: torch.Tensor


def loss_counts(batch: Batch, mcm_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a batch's losses are means over: its caption tokens ``[]`` and its masked entries per codebook ``[N]``.

    ``mcm_mask``: ``[B, T', N]`` bool (``T' >= T``, the batch's frames); padding is never counted.
    """
    frames = batch.codes.shape[1]
    masked = mcm_mask[:, :frames] & batch.frame_mask[:, :, None]
    return (batch.labels != IGNORE_INDEX).sum(), masked.sum(dim=(0, 1))


def backward_batch(
    model: ClapArtForCaptioning,
    batch: Batch,
    mcm_mask: torch.Tensor,
    micro_batch_size: int,
    device: torch.device,
    autocast: Autocast,
    counts: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> StepLosses:
    """Forward and backward one training batch, in slices of ``micro_batch_size`` rows if it is larger.

    Gradient accumulation: each slice's losses are its sums divided by the whole batch's counts
    (caption tokens, masked entries per codebook; ``loss_counts`` of the model's forward), so the
    accumulated gradients are the whole batch's up to float rounding, and so are the returned
    losses. Only dropout differs (its masks are drawn per slice). A slice is the batch's own rows
    (padding included), so the model sees each clip exactly as in the whole batch. Peak memory
    is that of one slice: a full-size Clotho batch (64 x 1022 encoder positions, bart-base) needs
    ~28 GB of activations in one pass on a CPU (float32), ~3.5 GB per slice of 8.

    ``counts``: :func:`loss_counts` of a larger batch that ``batch`` is one rank's share of
    (training on several processes); the losses are then this share's part of that batch's.
    """
    if counts is None and micro_batch_size >= batch.codes.shape[0]:
        batch = batch.to(device)
        with autocast():
            out = model(batch.codes, batch.frame_mask, batch.clap, labels=batch.labels, mcm_mask=mcm_mask.to(device))
        out.loss.backward()
        return StepLosses(out.loss.detach(), out.caption_loss.detach(), out.mcm_loss.detach())
    frames = batch.codes.shape[1]
    masked = mcm_mask[:, :frames] & batch.frame_mask[:, :, None]
    caption_count, mcm_count = loss_counts(batch, mcm_mask) if counts is None else counts
    counts = (caption_count.to(device), mcm_count.to(device))
    totals = [torch.zeros((), device=device) for _ in range(3)]
    for start in range(0, batch.codes.shape[0], micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        part = batch.select(rows).to(device)
        with autocast():
            out = model(part.codes, part.frame_mask, part.clap, labels=part.labels, mcm_mask=masked[rows].to(device), loss_counts=counts)
        out.loss.backward()
        for k, value in enumerate((out.loss, out.caption_loss, out.mcm_loss)):
            totals[k] = totals[k] + value.detach()
    return StepLosses(*totals)


class CropGridError(ParamsError):
    """``max_frames`` breaks the tokens' time-frequency grid; the message is one sentence."""


def check_crop_grid(max_frames: int, freq_patches: int, where: str = "model.max_frames") -> None:
    """Refuse a crop length that is not a whole number of time steps of the tokens.

    BEATs tokens come ``freq_patches`` = 8 per time step (index ``8 t + f``); a crop of another
    length, or one starting mid-step, makes position mod 8 stop meaning the frequency band.

    Raises:
        CropGridError: ``max_frames`` is not a multiple of ``freq_patches``.
    """
    if freq_patches > 1 and max_frames % freq_patches:
        raise CropGridError(
            f"{where}={max_frames} is not a multiple of {freq_patches}, the tokens' codes per time step "
            f"(frequency patches), so crops would break their time-frequency grid; use {max_frames // freq_patches * freq_patches}"
        )


# ---------------------------------------------------------------------------- the run's pieces


@dataclass
class _Run:
    """What stays fixed during one training run (built once by :func:`_prepare`)."""

    model: ClapArtForCaptioning
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    #: ``shuffle`` / ``crop`` / ``mcm``: one generator per random draw of the loop (this order is the checkpoint's)
    generators: dict[str, torch.Generator]
    device: torch.device
    autocast: Autocast
    train: Sequence[CaptionExample]
    val: Sequence[CaptionExample]
    #: caption ids per clip: ``train_ids[i][j]`` is caption ``j`` of clip ``i`` as ``<s> … </s>``
    train_ids: list[list[list[int]]]
    val_ids: list[list[list[int]]]
    #: every (clip, caption) training pair; an epoch is one shuffled pass over them
    pairs: list[tuple[int, int]]
    epochs: int
    batch_size: int
    micro_batch_size: int  # rows per forward/backward pass (gradient accumulation); batch_size = no slicing
    steps_per_epoch: int
    total_steps: int
    grad_clip: float
    log_every: int
    checkpoint_every: int  # 0: checkpoints at epoch ends only
    crop_step: int  # training crops start at multiples of it (the tokens' freq_patches)
    n_params: int
    ckpt_path: Path | None  # None: no checkpoints
    fingerprint: dict[str, str] | None  # what a checkpoint must match to be resumed
    #: how the epoch data/model holds is chosen: "loss" or ``scorer.metric``; ``select_by`` is what params asked
    select_metric: str
    select_by: str
    scorer: ValScorer | None  # None: validation by loss only, no beam search
    generate: dict[str, Any]  # caption_examples settings of the validation beam search (params generate)
    keep_best: int
    snapshots: train_state.EpochSnapshots  # weights of the kept epochs (beside last.pt, or a temp folder)
    seed: int = 0
    #: the processes (train.num_processes); rank 0 alone writes files
    dist: distributed.Dist = field(default_factory=distributed.Dist)


def _empty_window() -> dict[str, float]:
    return {"loss": 0.0, "caption_loss": 0.0, "mcm_loss": 0.0, "n": 0}


@dataclass
class LoopState:
    """Everything the loop changes, besides model, optimiser, schedule and RNGs; a checkpoint stores it.

    Position: the next batch to run is batch ``batch`` (0-based) of epoch ``epoch``, after ``step``
    optimiser steps in all.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    first_step_loss: float | None = None
    #: sums of :data:`LOSS_NAMES` and their count ``n`` since the last ``train/*`` point
    window: dict[str, float] = field(default_factory=_empty_window)
    #: means of the last logged window (the summary's ``final_*`` losses)
    last_window: dict[str, float] = field(default_factory=_empty_window)
    #: one record per validated epoch: ``epoch`` (1-based), ``step``, ``loss`` and the scores (``cider_d`` …)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    #: per epoch: seconds of training and of validation (``val_loss``, ``val_decode``, ``val_score``)
    epoch_seconds: list[dict[str, float]] = field(default_factory=list)
    seconds_before: float = 0.0  # training time of the runs this one continues
    started: float = field(default_factory=time.perf_counter)  # perf_counter at this run's loop start

    def elapsed(self) -> float:
        """Training seconds, the runs this one continues included."""
        return self.seconds_before + time.perf_counter() - self.started

    @property
    def val_losses(self) -> list[float]:
        return [record["loss"] for record in self.val_history]


def _build_model(
    train: Sequence[CaptionExample], model_params: dict, train_params: dict, init_from: Path | None
) -> tuple[ClapArtForCaptioning, PreTrainedTokenizerBase, str | None]:
    """Model and caption tokenizer: the one to fine-tune, or a new one (draws from the global RNG).

    Returns:
        ``(model, tokenizer, init_digest)``; ``init_digest`` fingerprints the fine-tuned model's
        starting weights (None for a new model).
    """
    use_clap = bool(model_params["use_clap"])
    if use_clap and train[0].clap is None:
        raise ValueError("model.use_clap is true but the training clips carry no CLAP embeddings")
    num_codebooks = int(np.asarray(train[0].codes).shape[1])
    if init_from is not None:
        model, tokenizer = load_for_finetuning(Path(init_from), model_params, train_params, num_codebooks=num_codebooks)
        return model, tokenizer, model_fingerprint(model)  # a resumed fine-tune must start from the same model
    tokenizer = make_tokenizer(model_params, train)
    clap_dim = int(np.asarray(train[0].clap).shape[0]) if use_clap else 512  # 512: unused without CLAP
    model = build_captioner(model_params, train_params, vocab_size=len(tokenizer), num_codebooks=num_codebooks, clap_dim=clap_dim)
    return model, tokenizer, None


def _prepare(
    train: Sequence[CaptionExample],
    val: Sequence[CaptionExample],
    model_params: dict,
    train_params: dict,
    seed: int,
    threads: int,
    checkpoint_dir: Path | None,
    init_from: Path | None,
    scorer: ValScorer | None,
    generate: Mapping[str, Any] | None,
    snapshot_dir: Path,
    dist: distributed.Dist,
) -> _Run:
    """Seed the RNGs, build model, tokenizer, optimiser and schedule; fingerprint the run for resuming.

    Several processes: every rank builds the same model (same seed); then ranks other than 0
    reseed the global RNG (:func:`distributed.rank_seed`) so that their dropout masks differ.
    """
    select_by, select_metric, scorer = _selection(train_params, scorer, val)
    device = torch.device(resolve_device(str(train_params.get("device", "auto"))))
    fingerprint_device = device  # "cuda", not "cuda:3": a checkpoint resumes on any number of GPUs
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    use_bf16 = bool(train_params.get("bf16", False)) and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    torch.manual_seed(seed)  # weight init and dropout (documented global side effect)
    generators = {
        "shuffle": torch.Generator().manual_seed(seed),
        "crop": torch.Generator().manual_seed(seed + 1),
        "mcm": torch.Generator().manual_seed(seed + 2),
    }
    model, tokenizer, init_digest = _build_model(train, model_params, train_params, init_from)
    if dist.rank > 0:
        torch.manual_seed(distributed.rank_seed(seed, dist.rank))
    crop_step = int(model_params.get("freq_patches") or 1)
    where = "model.max_frames" if init_from is None else f"max_frames of the model fine-tuned ({init_from})"
    check_crop_grid(model.config.max_codes, crop_step, where)  # time layout: a whole number of steps by construction
    model = model.to(device)
    model.train()
    max_label = model.config.bart.max_position_embeddings
    train_ids = [tokenize_captions(tokenizer, ex.captions, max_label) for ex in train]
    val_ids = [tokenize_captions(tokenizer, ex.captions, max_label) for ex in val]
    pairs = [(i, j) for i, ids in enumerate(train_ids) for j in range(len(ids))]

    epochs, batch_size = int(train_params["epochs"]), int(train_params["batch_size"])
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    optimizer = _optimizer(model, float(train_params["lr"]), float(train_params["weight_decay"]))
    timescale = train_params.get("timescale")
    scheduler = make_scheduler(optimizer, int(train_params["warmup_steps"]), None if timescale is None else int(timescale))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "training captioner: %d params, %d clips / %d pairs, %d epochs x %d steps, device %s, %d threads",
        n_params, len(train), len(pairs), epochs, steps_per_epoch, device, threads,
    )

    ckpt_path, fingerprint = None, None
    if checkpoint_dir is not None:
        ckpt_path = Path(checkpoint_dir) / train_state.CHECKPOINT_NAME
        if dist.is_main:
            train_state.remove_stale_temps(ckpt_path)
        fingerprint = train_state.fingerprint(
            model_params=model_params if init_digest is None else {**model_params, "init_weights": init_digest},
            train_params=train_params, seed=seed, train=train, val=val,
            tokenizer=tokenizer, device=fingerprint_device, threads=threads,
            selection={"metric": select_metric, "scored": scorer is not None, "generate": dict(generate or {})},
        )
    return _Run(
        model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler, generators=generators,
        device=device, autocast=autocast, train=train, val=val, train_ids=train_ids, val_ids=val_ids, pairs=pairs,
        epochs=epochs, batch_size=batch_size, micro_batch_size=int(train_params.get("micro_batch_size") or 0) or batch_size,
        steps_per_epoch=steps_per_epoch, total_steps=epochs * steps_per_epoch,
        grad_clip=float(train_params["grad_clip"]), log_every=int(train_params.get("log_every") or DEFAULT_LOG_EVERY),
        checkpoint_every=int(train_params.get("checkpoint_every") or 0), crop_step=crop_step, n_params=n_params,
        ckpt_path=ckpt_path, fingerprint=fingerprint, select_metric=select_metric, select_by=select_by, scorer=scorer,
        generate=dict(generate or {}), keep_best=int(train_params.get("keep_best") or 0),
        snapshots=train_state.EpochSnapshots(snapshot_dir), seed=seed, dist=dist,
    )


def _selection(train_params: dict, scorer: ValScorer | None, val: Sequence[CaptionExample]) -> tuple[str, str, ValScorer | None]:
    """``(select_by, metric ranked by, scorer to use)`` from ``train.select_by`` and the scorer given.

    Raises:
        ValueError: an unknown ``select_by``, a score asked for without a scorer (or one scoring
            something else), or fewer than 2 validation clips to score (CIDEr-D's IDF needs 2).
    """
    select_by = str(train_params.get("select_by") or "loss")
    if select_by not in SELECT_BY:
        raise ValueError(f"train.select_by={select_by!r} is not one of {', '.join(SELECT_BY)}")
    if select_by != "loss":
        if scorer is None:
            raise ValueError(f"train.select_by={select_by} needs a validation scorer (the train stage builds one); use loss without one")
        if scorer.metric != select_by and not (select_by == "spider" and scorer.metric == "cider_d" and scorer.note):
            raise ValueError(f"train.select_by={select_by} was given a scorer that ranks by {scorer.metric}")
    if scorer is not None and 0 < len(val) < 2:
        if select_by != "loss":
            raise ValueError(f"train.select_by={select_by} needs at least 2 validation clips to score (CIDEr-D), the validation split has {len(val)}")
        logger.warning("1 validation clip: too few to score captions (CIDEr-D needs 2); validating by loss only")
        scorer = None
    if scorer is not None and scorer.note and select_by != "loss":
        logger.warning("train.select_by=%s: %s", select_by, scorer.note)
    return select_by, select_by if select_by == "loss" else scorer.metric, scorer


def _checkpoint_to_resume(run: _Run, resume: bool) -> dict | None:
    """The checkpoint this run continues, else None (with one log line why).

    Continued: ``train.resume`` is set and ``last.pt`` was trained on the same inputs (fingerprint)
    and is not past this run's last step.

    Raises:
        CheckpointError: the file is there but cannot be loaded with ``weights_only=True``.
    """
    path = run.ckpt_path
    if path is None:
        return None
    if not resume:
        if path.is_file():
            logger.info("train.resume is false: training from scratch (%s will be overwritten)", path)
        return None
    if not path.is_file():
        logger.info("train.resume: no checkpoint at %s, training from scratch", path)
        return None
    state = train_state.load_checkpoint(path)
    differ = train_state.fingerprint_mismatch(state["fingerprint"], run.fingerprint)
    if differ:
        logger.warning(
            "train.resume: %s was trained on different inputs (%s differ); training from scratch", path, ", ".join(differ)
        )
        return None
    if state["step"] > run.total_steps:
        logger.warning(
            "train.resume: %s is at step %d, past this run's %d steps (train.epochs lowered); training from scratch",
            path, state["step"], run.total_steps,
        )
        return None
    missing = run.snapshots.missing(kept_epochs(state["val_history"], run.select_metric, run.keep_best))
    if missing:
        logger.warning(
            "train.resume: the weights of kept epoch(s) %s are missing from %s; training from scratch",
            ", ".join(map(str, missing)), run.snapshots.root,
        )
        return None
    return state


def _restore(run: _Run, ckpt: dict) -> LoopState:
    """Put model, optimiser, schedule and RNGs back as ``ckpt`` saved them; return its loop state."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    # last: model construction drew from the global RNG, the checkpoint's state wins
    train_state.restore_rng(ckpt["rng"], run.generators, run.device)
    if run.dist.world > 1 or "ranks" in ckpt["rng"]:
        _restore_rank_rng(run, ckpt)
    logger.info("resuming from %s: epoch %d, batch %d, step %d", run.ckpt_path, ckpt["epoch"] + 1, ckpt["batch"], ckpt["step"])
    return LoopState(
        epoch=ckpt["epoch"], batch=ckpt["batch"], step=ckpt["step"],
        first_step_loss=ckpt["first_step_loss"], window=ckpt["window"], last_window=ckpt["last_window"],
        val_history=[dict(r) for r in ckpt["val_history"]], epoch_seconds=[dict(r) for r in ckpt["epoch_seconds"]],
        seconds_before=ckpt["seconds"],
    )


def _restore_rank_rng(run: _Run, ckpt: dict) -> None:
    """Each rank's own dropout stream from a checkpoint of several processes (``rng["ranks"]``).

    The shuffle / crop / MCM generators are shared and already restored. Resumed on as many
    processes as were saved: every rank continues its stream (bitwise the uninterrupted run).
    On more: the new ranks start a fresh stream (seeded by rank and step); on fewer: the extra
    streams are dropped. Rank 0's stream is ``rng["torch"]`` either way (1 process continues it).
    """
    saved = ckpt["rng"].get("ranks", [])
    rank = run.dist.rank
    if rank == 0:
        return
    if rank < len(saved):
        torch.set_rng_state(saved[rank]["torch"])
        if run.device.type == "cuda" and "cuda" in saved[rank]:
            torch.cuda.set_rng_state(saved[rank]["cuda"], run.device)
    else:
        torch.manual_seed(distributed.rank_seed(run.seed, rank) + int(ckpt["step"]))


def _save_checkpoint(run: _Run, state: LoopState, shuffle_state: torch.Tensor) -> None:
    """Write ``last.pt`` for the loop as it stands at ``state``'s position (rank 0; every rank must call it).

    ``shuffle_state`` is the shuffle generator's state before the current epoch's permutation
    was drawn, so that a resumed run draws the same order again. With several processes the
    checkpoint also holds every rank's dropout RNG (``rng["ranks"]``, gathered to rank 0).
    """
    rng = train_state.capture_rng(run.generators, run.device)
    rng["shuffle"] = shuffle_state
    if run.dist.world > 1:
        own = {k: v for k, v in rng.items() if k in ("torch", "cuda")}
        rng["ranks"] = run.dist.gather({k: v.cpu() for k, v in own.items()})
    if not run.dist.is_main:
        return
    train_state.save_checkpoint(
        {
            "fingerprint": run.fingerprint,
            "epoch": state.epoch,
            "batch": state.batch,
            "step": state.step,
            "model": train_state.cpu_state_dict(run.model),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": rng,
            "first_step_loss": state.first_step_loss,
            "window": dict(state.window),
            "last_window": dict(state.last_window),
            "val_history": [dict(r) for r in state.val_history],
            "epoch_seconds": [dict(r) for r in state.epoch_seconds],
            "seconds": state.elapsed(),
        },
        run.ckpt_path,
    )


class _Curves:
    """dvclive curves: ``train/*`` per logging window, ``val/loss`` and ``epoch`` per epoch.

    Without a live dir every method does nothing (only the DVC stage logs curves; library users
    need not have dvclive). Resuming keeps the curves logged up to the checkpoint's step and
    drops later rows (a killed run logs them again); otherwise the folder is cleared.
    """

    def __init__(self, live_dir: Path | None, resumed_at: int | None, params: dict[str, Any]) -> None:
        self.live = None
        if live_dir is None:
            return
        from dvclive import Live

        if resumed_at is not None:
            train_state.truncate_live_metrics(Path(live_dir), resumed_at)
        self.live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=resumed_at is not None)
        self.live.log_params(params)

    def log_train(self, step: int, means: dict[str, float], lr: float) -> None:
        if self.live is not None:
            self.live.step = step
            for key, value in means.items():
                self.live.log_metric(f"train/{key}", value)
            self.live.log_metric("train/lr", lr)

    def log_val(self, step: int, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """``val/loss`` and each validation score (``val/cider_d`` …) at the epoch's last step."""
        if self.live is not None:
            self.live.step = step
            for key, value in metrics.items():
                if value is not None:
                    self.live.log_metric(f"val/{key}", value)
            self.live.log_metric("epoch", epoch, plot=False)

    def end_epoch(self) -> None:
        if self.live is not None:
            self.live.make_summary()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def _optimisation_step(run: _Run, chunk: Sequence[tuple[int, int]]) -> tuple[dict[str, float], float]:
    """One AdamW step on the (clip, caption) pairs ``chunk``.

    Draws the crops (``crop`` generator), the MCM mask (``mcm``) and dropout (global RNG), in
    that order. Returns the step's :data:`LOSS_NAMES` and the learning rate it used.
    """
    model = run.model
    batch = build_batch(
        [run.train[i] for i, _ in chunk],
        max_frames=model.config.max_codes,
        use_clap=model.config.use_clap,
        crop_generator=run.generators["crop"],
        caption_ids=[run.train_ids[i][j] for i, j in chunk],
        crop_step=run.crop_step,
    )
    # MCM masks are drawn on CPU from their own generator, then moved: device-independent.
    mcm_mask = model.mask_codes(batch.codes, batch.frame_mask, run.generators["mcm"])
    run.optimizer.zero_grad(set_to_none=True)
    if run.dist.world == 1:
        out = backward_batch(model, batch, mcm_mask, run.micro_batch_size, run.device, run.autocast)
    else:
        out = _backward_share(run, batch, mcm_mask)
    torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
    lr_used = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    return {"loss": out.loss.item(), "caption_loss": out.caption_loss.item(), "mcm_loss": out.mcm_loss.item()}, lr_used


def _backward_share(run: _Run, batch: Batch, mcm_mask: torch.Tensor) -> StepLosses:
    """Several processes: forward/backward this rank's rows of the global ``batch``, then sum the
    gradients and the losses over the ranks (:mod:`clapart_core.captioner.distributed`).

    The losses are normalised by the *global* batch's counts, so the summed gradients are the
    1-process gradient up to float rounding (dropout aside); a rank with no rows (a last batch
    smaller than the number of processes) adds nothing.
    """
    rows = run.dist.rows(batch.codes.shape[0])
    zero = torch.zeros((), device=run.device)
    out = StepLosses(zero, zero, zero)
    if rows.stop > rows.start:
        share = batch.select(rows)
        out = backward_batch(run.model, share, mcm_mask[rows], run.micro_batch_size, run.device, run.autocast, counts=loss_counts(batch, mcm_mask))
    run.dist.sum_gradients([p for p in run.model.parameters() if p.requires_grad])
    total = run.dist.sum(torch.stack([out.loss.float(), out.caption_loss.float(), out.mcm_loss.float()]))
    return StepLosses(*total.unbind())


def _add_to_window(state: LoopState, losses: dict[str, float]) -> None:
    """Count one step's losses; a non-finite loss stops training."""
    state.step += 1
    if state.first_step_loss is None:
        state.first_step_loss = losses["loss"]
    if not math.isfinite(losses["loss"]):
        raise FloatingPointError(f"non-finite training loss {losses['loss']} at step {state.step}")
    for key in LOSS_NAMES:
        state.window[key] += losses[key]
    state.window["n"] += 1


def _close_window(state: LoopState, curves: _Curves, lr: float) -> dict[str, float]:
    """Log the window's mean losses (``train/*``) and start a new window; returns the means."""
    means = {k: state.window[k] / state.window["n"] for k in LOSS_NAMES}
    curves.log_train(state.step, means, lr)
    state.last_window = {**means, "n": state.window["n"]}
    state.window = _empty_window()
    return means


def _validate_and_select(run: _Run, state: LoopState, curves: _Curves, epoch: int, train_seconds: float) -> None:
    """End of (1-based) ``epoch``: validation loss and scores (``val/*``), and the kept epochs.

    The epoch's weights are snapshotted when it is among the kept ones; snapshots of epochs that
    drop out are removed by the caller after the next checkpoint (see :class:`train_state.EpochSnapshots`).
    """
    if not run.val:
        return
    metrics, seconds = validate(
        run.model, run.tokenizer, run.val, run.val_ids, scorer=run.scorer, generate=run.generate,
        batch_size=run.batch_size, device=run.device, autocast=run.autocast, dist=run.dist,
    )
    state.val_history.append({"epoch": epoch, "step": state.step, **metrics})
    state.epoch_seconds.append({"epoch": epoch, "train": train_seconds, **{f"val_{k}": v for k, v in seconds.items()}})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)
    logger.info("epoch %d: val %s (validation %.1f s, of which beam search %.1f s)", epoch, shown, sum(seconds.values()), seconds["decode"])
    curves.log_val(state.step, epoch, metrics)
    if epoch in kept_epochs(state.val_history, run.select_metric, run.keep_best) and run.dist.is_main:
        run.snapshots.save(run.model, epoch)


def _summary(run: _Run, state: LoopState, seconds: float, *, pretrained: bool, init_from: Path | None, seed: int, resumed_from: int) -> dict:
    """``training_summary.json``: see :func:`train_captioner`'s return value."""
    kept = kept_epochs(state.val_history, run.select_metric, run.keep_best) if state.val_history else []
    best = next((r for r in state.val_history if kept and r["epoch"] == kept[0]), None)
    return {
        "steps": state.step,
        "epochs": run.epochs,
        "first_step_loss": state.first_step_loss,
        "final_loss": state.last_window.get("loss"),
        "final_caption_loss": state.last_window.get("caption_loss"),
        "final_mcm_loss": state.last_window.get("mcm_loss"),
        "val_losses": state.val_losses,
        "val_history": state.val_history,
        "select_by": run.select_by,
        "selected_by": run.select_metric,
        "select_note": run.scorer.note if run.scorer is not None and run.select_by != "loss" else None,
        "best_epoch": kept[0] if kept else run.epochs,
        "best_val_loss": best["loss"] if best else None,
        "best_score": best.get(run.select_metric) if best else None,
        "kept_epochs": kept[: run.keep_best],
        "epoch_seconds": state.epoch_seconds,
        "seconds_per_step": seconds / max(state.step, 1),
        "n_parameters": run.n_params,
        "n_train_pairs": len(run.pairs),
        "vocab_size": len(run.tokenizer),
        "device": str(run.device),
        "pretrained": pretrained,
        "init_from": None if init_from is None else str(init_from),
        "seed": seed,
        "resumed_from_step": resumed_from,
    }


# ---------------------------------------------------------------------------- entry point


def train_captioner(
    train: Sequence[CaptionExample],
    val: Sequence[CaptionExample],
    *,
    model_params: dict,
    train_params: dict,
    out_dir: Path,
    live_dir: Path | None,
    seed: int,
    checkpoint_dir: Path | None = None,
    init_from: Path | None = None,
    val_scorer: ValScorer | None = None,
    generate_params: Mapping[str, Any] | None = None,
) -> dict:
    """Train the captioner and save it (HF ``save_pretrained`` layout, with its tokenizer) to ``out_dir``.

    ``out_dir`` holds the epoch chosen by ``train.select_by``; ``out_dir/epochs/epoch_K/`` (each a
    complete captioner folder) the ``train.keep_best`` best epochs, best first in the summary's
    ``kept_epochs``.

    Args:
        train, val: clips; every caption of a training clip is a separate example.
        model_params: ``pretrained``, ``tokenizer``, ``vocab_size``, ``codebook_size``, ``d_model``,
            ``encoder_layers``, ``decoder_layers``, ``attention_heads``, ``ffn_dim``, ``dropout``,
            ``use_clap``, ``max_frames``.
        train_params: ``epochs``, ``batch_size``, ``lr``, ``warmup_steps``, ``weight_decay``,
            ``label_smoothing``, ``grad_clip``, ``mcm_weight``, ``mcm_prob``, ``mcm_span``,
            ``device``, ``bf16``, ``num_threads`` (0/None = all cores), optional ``timescale``
            (of the inverse-sqrt schedule; None = the warm-up), ``micro_batch_size`` (rows per forward/backward pass, see
            [`backward_batch`]; 0/None = the whole batch), ``select_by`` (``spider`` |
            ``cider_d`` | ``loss``; absent = ``loss``), ``keep_best`` (epochs kept besides the
            selected one's folder; absent = 0), ``log_every``, ``resume`` (continue from a
            matching checkpoint in ``checkpoint_dir``) and ``checkpoint_every`` (steps between
            mid-epoch checkpoints; 0/None = epoch ends only).
        out_dir: final model directory (replaced atomically).
        live_dir: dvclive directory (``train/*`` every ``log_every`` steps, ``val/loss`` and the
            validation scores ``val/cider_d`` … per epoch), or None for no dvclive logging.
        seed: seeds the global torch RNG (init, dropout) and the shuffle/crop/MCM generators.
        init_from: a trained captioner directory to fine-tune (the paper's Clotho phase starts
            from its AudioCaps model): its weights, tokenizer and architecture are used and
            ``model_params`` other than ``codebook_size``/``use_clap`` (checked) are ignored;
            the MCM and label-smoothing settings come from ``train_params``.
        checkpoint_dir: where ``last.pt`` and the kept epochs' snapshots (``epochs/``) are
            written (atomically), or None for no checkpoints (snapshots then go to a temp folder).
        val_scorer: scores the validation captions after each epoch (the train stage builds it
            from ``clapart_core.scoring``); required unless ``select_by`` is ``loss``, and with
            ``loss`` still used to log the scores. None: no beam search, loss only.
        generate_params: the validation beam search's settings (params ``generate``:
            ``num_beams``, ``max_length``, ``no_repeat_ngram_size``, ``batch_size``).

    Raises:
        CheckpointError: ``resume`` is set and the checkpoint there cannot be loaded safely.
        CropGridError: ``max_frames`` is not a multiple of ``model_params["freq_patches"]``.
        ValueError: an unusable ``select_by`` (see :func:`_selection`).

    Returns:
        Summary: ``steps``, ``epochs``, ``first_step_loss``, ``final_loss``,
        ``final_caption_loss``, ``final_mcm_loss`` (means over the last logging window),
        ``val_losses``, ``val_history`` (per epoch: ``epoch``, ``step``, ``loss`` and the
        scores), ``select_by`` (asked), ``selected_by`` (used), ``select_note``, ``best_epoch``
        (the one ``out_dir`` holds), ``best_val_loss`` and ``best_score`` (its values),
        ``kept_epochs``, ``epoch_seconds`` (training and validation seconds per epoch),
        ``seconds_per_step``, sizes, device, ``resumed_from_step`` (0 for a fresh run).
    """
    if not train:
        raise ValueError("no training examples")
    threads = int(train_params.get("num_threads") or 0) or (os.cpu_count() or 1)
    cpu = resolve_device(str(train_params.get("device", "auto"))) == "cpu"
    dist = distributed.init(int(train_params.get("num_processes") or 1), cpu=cpu)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    selection = (val_scorer, generate_params)
    try:
        if checkpoint_dir is not None:
            return _train(train, val, model_params, train_params, Path(out_dir), live_dir, seed, threads, checkpoint_dir, init_from, selection, dist)
        with tempfile.TemporaryDirectory(prefix="clapart-epochs-") as snapshots:
            # several processes without a checkpoint dir: rank 0 alone writes and reads the snapshots
            return _train(train, val, model_params, train_params, Path(out_dir), live_dir, seed, threads, None, init_from, selection, dist, Path(snapshots))
    finally:
        torch.set_num_threads(previous_threads)
        dist.close()


def _train(
    train: Sequence[CaptionExample],
    val: Sequence[CaptionExample],
    model_params: dict,
    train_params: dict,
    out_dir: Path,
    live_dir: Path | None,
    seed: int,
    threads: int,
    checkpoint_dir: Path | None,
    init_from: Path | None,
    selection: tuple[ValScorer | None, Mapping[str, Any] | None],
    dist: distributed.Dist,
    snapshot_dir: Path | None = None,
) -> dict:
    """The body of [`train_captioner`], run with the requested thread count: the loop, top to bottom."""
    snapshot_dir = snapshot_dir if checkpoint_dir is None else Path(checkpoint_dir) / "epochs"
    run = _prepare(train, val, model_params, train_params, seed, threads, checkpoint_dir, init_from, *selection, snapshot_dir, dist)
    ckpt = _checkpoint_to_resume(run, bool(train_params.get("resume")))
    state = _restore(run, ckpt) if ckpt is not None else LoopState()
    if dist.is_main:
        run.snapshots.prune(kept_epochs(state.val_history, run.select_metric, run.keep_best) if state.val_history else [])
    resumed_from, start_epoch, start_batch = state.step, state.epoch, state.batch
    curves = _Curves(
        live_dir if dist.is_main else None,
        resumed_at=state.step if ckpt is not None else None,
        params={"n_parameters": run.n_params, "n_train_pairs": len(run.pairs), "device": str(run.device)},
    )

    shuffle = run.generators["shuffle"]
    state.started = time.perf_counter()
    progress = tqdm(total=run.total_steps, initial=state.step, desc="train captioner", unit="step", disable=not dist.is_main)
    for epoch in range(start_epoch, run.epochs):
        epoch_started = time.perf_counter()
        epoch_shuffle_state = shuffle.get_state()
        order = torch.randperm(len(run.pairs), generator=shuffle).tolist()
        for batch_index, start in enumerate(range(0, len(order), run.batch_size)):
            if epoch == start_epoch and batch_index < start_batch:
                continue  # done before the checkpoint; its crops and masks are in the restored RNGs
            losses, lr = _optimisation_step(run, [run.pairs[k] for k in order[start : start + run.batch_size]])
            state.batch = batch_index + 1
            _add_to_window(state, losses)
            progress.update(1)
            if state.window["n"] == run.log_every or state.step == run.total_steps:
                means = _close_window(state, curves, lr)
                progress.set_postfix(loss=f"{means['loss']:.3f}", epoch=epoch + 1)
            mid_epoch = state.batch < run.steps_per_epoch
            if run.ckpt_path is not None and run.checkpoint_every and state.step % run.checkpoint_every == 0 and mid_epoch:
                _save_checkpoint(run, state, epoch_shuffle_state)
        _validate_and_select(run, state, curves, epoch + 1, time.perf_counter() - epoch_started)
        curves.end_epoch()
        state.epoch, state.batch = epoch + 1, 0
        if run.ckpt_path is not None:
            _save_checkpoint(run, state, shuffle.get_state())
        # only now that the checkpoint lists the new kept epochs may the dropped ones go
        if state.val_history and dist.is_main:
            run.snapshots.prune(kept_epochs(state.val_history, run.select_metric, run.keep_best))
    progress.close()
    seconds = state.elapsed()

    pretrained = bool(model_params.get("pretrained")) or init_from is not None
    summary = _summary(run, state, seconds, pretrained=pretrained, init_from=init_from, seed=seed, resumed_from=resumed_from)
    summary["num_processes"] = dist.world
    if not dist.is_main:
        return summary  # rank 0 writes data/model
    model = run.model.to("cpu").eval()
    if state.val_history:  # the selected epoch's weights, which may be the last epoch's
        best = summary["best_epoch"]
        logger.info("data/model: epoch %d, selected by %s (%s)", best, run.select_metric, summary["best_score"])
        model = load_snapshot(run.snapshots.path(best))
    kept = {epoch: run.snapshots.path(epoch) for epoch in summary["kept_epochs"]}
    save_captioner(model, run.tokenizer, summary, Path(out_dir), kept_epochs=kept)
    curves.end()
    logger.info("saved captioner to %s (%d steps, %.3f s/step)", out_dir, state.step, summary["seconds_per_step"])
    return summary
