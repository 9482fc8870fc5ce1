"""Training the ART-token captioner: batching, optimiser, schedule, logging and atomic saving.

Recipe (EnCLAP, see design.md): every (clip, caption) pair is one example; each batch draws a
random crop of at most ``max_frames`` frames per clip and a fresh MCM mask; the loss is the
label-smoothed caption cross-entropy plus ``mcm_weight`` × the weighted MCM loss; AdamW with
weight decay, gradient clipping, and an inverse-square-root schedule with linear warm-up.

Determinism: the shuffle, the crops and the MCM masks each use their own ``torch.Generator``
seeded from ``seed``; weight initialisation and dropout use torch's global RNG, which
``train_captioner`` seeds with ``torch.manual_seed(seed)`` once at its start (documented side
effect). Same seed, same data, same thread count -> identical losses and weights on CPU.

Resume: with a ``checkpoint_dir`` the loop writes ``last.pt`` (see :mod:`clapart_core.captioner.train_state`)
at every epoch end and every ``checkpoint_every`` steps; with ``resume: true`` it continues from
a matching one, to bitwise the same result as the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from clapart_core.captioner import train_state
from clapart_core.captioner.model import IGNORE_INDEX, ClapArtConfig, ClapArtForCaptioning, crop_frames, small_bart_config
from clapart_core.pipeline.params import resolve_device
from clapart_core.pipeline.storage import model_fingerprint
from clapart_core.captioner.text import load_caption_tokenizer, normalize_caption, train_caption_tokenizer

logger = logging.getLogger(__name__)

#: default number of optimiser steps between two ``train/*`` dvclive points
DEFAULT_LOG_EVERY = 10


@dataclass(frozen=True)
class CaptionExample:
    """One clip as the captioner sees it.

    Attributes:
        clip_id: unique clip id.
        codes: ``[T, N]`` int codes, N codebooks per frame, values in ``[0, K)``.
        clap: ``[E]`` float32 CLAP audio embedding (normalised by the model), or None.
        captions: one or more reference captions; training uses each as a separate target.
    """

    clip_id: str
    codes: np.ndarray
    clap: np.ndarray | None
    captions: tuple[str, ...]


@dataclass
class Batch:
    """A padded model batch.

    Attributes:
        codes: ``[B, T, N]`` long (padding holds 0; ``frame_mask`` says what is real).
        frame_mask: ``[B, T]`` bool, True = valid frame.
        clap: ``[B, E]`` float32, or None when the model has no CLAP slot.
        labels: ``[B, L]`` long caption ids ``<s> … </s>``, -100 at padding; None for decoding.
    """

    codes: torch.Tensor
    frame_mask: torch.Tensor
    clap: torch.Tensor | None
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(
            codes=self.codes.to(device),
            frame_mask=self.frame_mask.to(device),
            clap=None if self.clap is None else self.clap.to(device),
            labels=None if self.labels is None else self.labels.to(device),
        )


def build_batch(
    examples: Sequence[CaptionExample],
    *,
    max_frames: int,
    use_clap: bool,
    crop_generator: torch.Generator | None,
    caption_ids: Sequence[Sequence[int]] | None = None,
) -> Batch:
    """Pad examples into a [`Batch`].

    Args:
        examples: the clips.
        max_frames: crop length; a random window when ``crop_generator`` is given (training),
            the first frames otherwise (evaluation).
        use_clap: whether to stack the CLAP embeddings (all examples must have one).
        crop_generator: RNG for training crops, or None.
        caption_ids: one tokenised caption (with ``<s>``/``</s>``) per example, or None.
    """
    clips = [crop_frames(torch.as_tensor(np.asarray(ex.codes), dtype=torch.long), max_frames, crop_generator) for ex in examples]
    num_codebooks = clips[0].shape[1]
    longest = max(max(clip.shape[0] for clip in clips), 1)
    codes = torch.zeros(len(clips), longest, num_codebooks, dtype=torch.long)
    frame_mask = torch.zeros(len(clips), longest, dtype=torch.bool)
    for row, clip in enumerate(clips):
        codes[row, : clip.shape[0]] = clip
        frame_mask[row, : clip.shape[0]] = True

    clap = None
    if use_clap:
        missing = [ex.clip_id for ex in examples if ex.clap is None]
        if missing:
            raise ValueError(f"use_clap=True but clips {missing[:3]} have no CLAP embedding")
        clap = torch.as_tensor(np.stack([np.asarray(ex.clap, dtype=np.float32) for ex in examples]))

    labels = None
    if caption_ids is not None:
        width = max(len(ids) for ids in caption_ids)
        labels = torch.full((len(caption_ids), width), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(caption_ids):
            labels[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    return Batch(codes=codes, frame_mask=frame_mask, clap=clap, labels=labels)


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimiser step ``step`` (1-based).

    With warm-up: ``min(step / warmup, sqrt(warmup / step))`` — linear rise to 1 at ``warmup``,
    then ``1/sqrt`` decay. Without warm-up (``warmup_steps = 0``, the Clotho fine-tune):
    ``1 / sqrt(step)``, i.e. normalised so that step 1 uses the full ``lr``.
    """
    step = max(step, 1)
    if warmup_steps <= 0:
        return 1.0 / math.sqrt(step)
    return min(step / warmup_steps, math.sqrt(warmup_steps / step))


def tokenize_captions(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_length: int) -> list[list[int]]:
    """Normalise and tokenise captions to ``<s> … </s>`` id lists (truncated to ``max_length``)."""
    encoded = tokenizer(
        [normalize_caption(c) for c in captions], truncation=True, max_length=max_length, add_special_tokens=True
    )
    return [list(ids) for ids in encoded["input_ids"]]


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
    from clapart_core.captioner.generate import load_captioner  # decoding imports this module's Batch

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
    # The fine-tuning recipe may change the auxiliary losses; the architecture stays.
    for key in ("mcm_prob", "mcm_span", "mcm_weight", "label_smoothing"):
        setattr(config, key, type(getattr(config, key))(train_params[key]))
    logger.info("fine-tuning %s", model_dir)
    return model, tokenizer


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights are not decayed (the usual transformers convention)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


@dataclass
class StepLosses:
    """The losses of one optimiser step (the whole batch's, also when it ran in slices)."""

    loss: torch.Tensor
    caption_loss: torch.Tensor
    mcm_loss: torch.Tensor


def backward_batch(
    model: ClapArtForCaptioning,
    batch: Batch,
    mcm_mask: torch.Tensor,
    micro_batch_size: int,
    device: torch.device,
    autocast,
) -> StepLosses:
    """Forward and backward one training batch, in slices of ``micro_batch_size`` rows if it is larger.

    Gradient accumulation: each slice's losses are its sums divided by the whole batch's counts
    (caption tokens, masked entries per codebook; ``loss_counts`` of the model's forward), so the
    accumulated gradients are the whole batch's up to float rounding, and so are the returned
    losses. Only dropout differs (its masks are drawn per slice). A slice is the batch's own rows
    (padding included), so the model sees each clip exactly as in the whole batch. Peak memory
    is that of one slice: a full-size Clotho batch (64 x 1022 encoder positions, bart-base) needs
    ~28 GB of activations in one pass on a CPU (float32), ~3.5 GB per slice of 8.
    """
    if micro_batch_size >= batch.codes.shape[0]:
        batch = batch.to(device)
        with autocast():
            out = model(batch.codes, batch.frame_mask, batch.clap, labels=batch.labels, mcm_mask=mcm_mask.to(device))
        out.loss.backward()
        return StepLosses(out.loss.detach(), out.caption_loss.detach(), out.mcm_loss.detach())
    frames = batch.codes.shape[1]
    masked = mcm_mask[:, :frames] & batch.frame_mask[:, :, None]
    counts = ((batch.labels != IGNORE_INDEX).sum().to(device), masked.sum(dim=(0, 1)).to(device))
    totals = [torch.zeros((), device=device) for _ in range(3)]
    for start in range(0, batch.codes.shape[0], micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        part = Batch(
            codes=batch.codes[rows],
            frame_mask=batch.frame_mask[rows],
            clap=None if batch.clap is None else batch.clap[rows],
            labels=batch.labels[rows],
        ).to(device)
        with autocast():
            out = model(part.codes, part.frame_mask, part.clap, labels=part.labels, mcm_mask=masked[rows].to(device), loss_counts=counts)
        out.loss.backward()
        for k, value in enumerate((out.loss, out.caption_loss, out.mcm_loss)):
            totals[k] = totals[k] + value.detach()
    return StepLosses(*totals)


@torch.no_grad()
def evaluate_loss(
    model: ClapArtForCaptioning,
    examples: Sequence[CaptionExample],
    caption_ids: Sequence[Sequence[Sequence[int]]],
    *,
    batch_size: int,
    device: torch.device,
    autocast,
) -> float:
    """Mean caption loss (label-smoothed, no MCM, first-frames crop) over all (clip, caption) pairs."""
    was_training = model.training
    model.eval()
    pairs = [(i, j) for i, ids in enumerate(caption_ids) for j in range(len(ids))]
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = build_batch(
            [examples[i] for i, _ in chunk],
            max_frames=model.config.max_frames,
            use_clap=model.config.use_clap,
            crop_generator=None,
            caption_ids=[caption_ids[i][j] for i, j in chunk],
        ).to(device)
        with autocast():
            out = model(batch.codes, batch.frame_mask, batch.clap, labels=batch.labels)
        total += float(out.caption_loss) * len(chunk)
        count += len(chunk)
    model.train(was_training)
    return total / max(count, 1)


def _save_atomically(model: ClapArtForCaptioning, tokenizer, summary: dict, out_dir: Path) -> None:
    """Write model + tokenizer + summary to a temp dir beside ``out_dir``, then rename it into place.

    A crash leaves either the previous ``out_dir`` or the temp dir, never a half-written
    ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)


def _matching_checkpoint(path: Path, fingerprint: dict[str, str], total_steps: int) -> dict | None:
    """The checkpoint at ``path`` if this run may continue it, else None (with one log line why).

    Raises:
        CheckpointError: the file is there but cannot be loaded with ``weights_only=True``.
    """
    if not path.is_file():
        logger.info("train.resume: no checkpoint at %s, training from scratch", path)
        return None
    state = train_state.load_checkpoint(path)
    differ = train_state.fingerprint_mismatch(state["fingerprint"], fingerprint)
    if differ:
        logger.warning(
            "train.resume: %s was trained on different inputs (%s differ); training from scratch", path, ", ".join(differ)
        )
        return None
    if state["step"] > total_steps:
        logger.warning(
            "train.resume: %s is at step %d, past this run's %d steps (train.epochs lowered); training from scratch",
            path, state["step"], total_steps,
        )
        return None
    return state


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
) -> dict:
    """Train the captioner and save it (HF ``save_pretrained`` layout, with its tokenizer) to ``out_dir``.

    Args:
        train, val: clips; every caption of a training clip is a separate example.
        model_params: ``pretrained``, ``tokenizer``, ``vocab_size``, ``codebook_size``, ``d_model``,
            ``encoder_layers``, ``decoder_layers``, ``attention_heads``, ``ffn_dim``, ``dropout``,
            ``use_clap``, ``max_frames``.
        train_params: ``epochs``, ``batch_size``, ``lr``, ``warmup_steps``, ``weight_decay``,
            ``label_smoothing``, ``grad_clip``, ``mcm_weight``, ``mcm_prob``, ``mcm_span``,
            ``device``, ``bf16``, ``num_threads`` (0/None = all cores), optional ``micro_batch_size``
            (rows per forward/backward pass, see [`backward_batch`]; 0/None = the whole batch), ``log_every``,
            ``resume`` (continue from a matching checkpoint in ``checkpoint_dir``) and
            ``checkpoint_every`` (steps between mid-epoch checkpoints; 0/None = epoch ends only).
        out_dir: final model directory (replaced atomically).
        live_dir: dvclive directory (``train/*`` every ``log_every`` steps, ``val/loss`` per
            epoch), or None for no dvclive logging.
        seed: seeds the global torch RNG (init, dropout) and the shuffle/crop/MCM generators.
        init_from: a trained captioner directory to fine-tune (the paper's Clotho phase starts
            from its AudioCaps model): its weights, tokenizer and architecture are used and
            ``model_params`` other than ``codebook_size``/``use_clap`` (checked) are ignored;
            the MCM and label-smoothing settings come from ``train_params``.
        checkpoint_dir: where ``last.pt`` is written (atomically), or None for no checkpoints.

    Raises:
        CheckpointError: ``resume`` is set and the checkpoint there cannot be loaded safely.

    Returns:
        Summary: ``steps``, ``epochs``, ``first_step_loss``, ``final_loss``,
        ``final_caption_loss``, ``final_mcm_loss`` (means over the last logging window),
        ``val_losses``, ``best_epoch``, ``best_val_loss``, ``seconds_per_step``, sizes, device,
        ``resumed_from_step`` (0 for a fresh run).
    """
    if not train:
        raise ValueError("no training examples")
    threads = int(train_params.get("num_threads") or 0) or (os.cpu_count() or 1)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(train, val, model_params, train_params, Path(out_dir), live_dir, seed, threads, checkpoint_dir, init_from)
    finally:
        torch.set_num_threads(previous_threads)


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
    init_from: Path | None = None,
) -> dict:
    """The body of [`train_captioner`], run with the requested thread count."""
    device = torch.device(resolve_device(str(train_params.get("device", "auto"))))
    use_bf16 = bool(train_params.get("bf16", False)) and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    torch.manual_seed(seed)  # weight init and dropout (documented global side effect)
    shuffle_gen = torch.Generator().manual_seed(seed)
    crop_gen = torch.Generator().manual_seed(seed + 1)
    mcm_gen = torch.Generator().manual_seed(seed + 2)

    use_clap = bool(model_params["use_clap"])
    if use_clap and train[0].clap is None:
        raise ValueError("model.use_clap is true but the training clips carry no CLAP embeddings")
    num_codebooks = int(np.asarray(train[0].codes).shape[1])
    init_digest = None
    if init_from is not None:
        model, tokenizer = load_for_finetuning(Path(init_from), model_params, train_params, num_codebooks=num_codebooks)
        init_digest = model_fingerprint(model)  # a resumed fine-tune must start from the same model
    else:
        tokenizer = make_tokenizer(model_params, train)
        clap_dim = int(np.asarray(train[0].clap).shape[0]) if use_clap else 512  # 512: unused without CLAP
        model = build_captioner(model_params, train_params, vocab_size=len(tokenizer), num_codebooks=num_codebooks, clap_dim=clap_dim)
    model = model.to(device)
    model.train()
    max_label = model.config.bart.max_position_embeddings
    train_ids = [tokenize_captions(tokenizer, ex.captions, max_label) for ex in train]
    val_ids = [tokenize_captions(tokenizer, ex.captions, max_label) for ex in val]
    pairs = [(i, j) for i, ids in enumerate(train_ids) for j in range(len(ids))]

    epochs = int(train_params["epochs"])
    batch_size = int(train_params["batch_size"])
    micro_batch = int(train_params.get("micro_batch_size") or 0) or batch_size
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup = int(train_params["warmup_steps"])
    grad_clip = float(train_params["grad_clip"])
    log_every = int(train_params.get("log_every") or DEFAULT_LOG_EVERY)
    optimizer = _optimizer(model, float(train_params["lr"]), float(train_params["weight_decay"]))
    # LambdaLR evaluates the factor with the number of steps already taken (0 for the first).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: inverse_sqrt_factor(done + 1, warmup))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "training captioner: %d params, %d clips / %d pairs, %d epochs x %d steps, device %s, %d threads",
        n_params, len(train), len(pairs), epochs, steps_per_epoch, device, threads,
    )

    ckpt_path = Path(checkpoint_dir) / train_state.CHECKPOINT_NAME if checkpoint_dir is not None else None
    fingerprint = None
    resumed = None
    if ckpt_path is not None:
        train_state.remove_stale_temps(ckpt_path)
        fingerprint = train_state.fingerprint(
            model_params=model_params if init_digest is None else {**model_params, "init_weights": init_digest},
            train_params=train_params, seed=seed, train=train, val=val,
            tokenizer=tokenizer, device=device, threads=threads,
        )
        if train_params.get("resume"):
            resumed = _matching_checkpoint(ckpt_path, fingerprint, total_steps)
        elif ckpt_path.is_file():
            logger.info("train.resume is false: training from scratch (%s will be overwritten)", ckpt_path)
    generators = {"shuffle": shuffle_gen, "crop": crop_gen, "mcm": mcm_gen}

    step, start_epoch, start_batch = 0, 0, 0
    first_step_loss: float | None = None
    window = {"loss": 0.0, "caption_loss": 0.0, "mcm_loss": 0.0, "n": 0}
    last_window = dict(window)
    val_losses: list[float] = []
    best_val, best_epoch, best_state = math.inf, -1, None
    seconds_before = 0.0  # training time of the runs this one continues
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        # last: model construction above drew from the global RNG, the checkpoint's state wins
        train_state.restore_rng(resumed["rng"], generators, device)
        step, start_epoch, start_batch = resumed["step"], resumed["epoch"], resumed["batch"]
        first_step_loss, window, last_window = resumed["first_step_loss"], resumed["window"], resumed["last_window"]
        val_losses = list(resumed["val_losses"])
        best_val, best_epoch, best_state = resumed["best_val"], resumed["best_epoch"], resumed["best_state"]
        seconds_before = resumed["seconds"]
        logger.info("resuming from %s: epoch %d, batch %d, step %d", ckpt_path, start_epoch + 1, start_batch, step)
    resumed_from = step

    live = None
    if live_dir is not None:
        from dvclive import Live  # only the DVC stage logs curves; library users need not have dvclive

        if resumed is not None:
            train_state.truncate_live_metrics(Path(live_dir), step)
        # resume=True keeps the curves logged up to the checkpoint; otherwise the folder is cleared
        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=resumed is not None)
        live.log_params({"n_parameters": n_params, "n_train_pairs": len(pairs), "device": str(device)})

    def save_checkpoint(epoch_done: int, batch_done: int, shuffle_state: torch.Tensor) -> None:
        """Checkpoint the loop as it stands after ``batch_done`` batches of epoch ``epoch_done``."""
        rng = train_state.capture_rng(generators, device)
        rng["shuffle"] = shuffle_state  # regenerates the order of the epoch being resumed
        train_state.save_checkpoint(
            {
                "fingerprint": fingerprint,
                "epoch": epoch_done,
                "batch": batch_done,
                "step": step,
                "model": train_state.cpu_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "first_step_loss": first_step_loss,
                "window": dict(window),
                "last_window": dict(last_window),
                "val_losses": list(val_losses),
                "best_val": best_val,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "seconds": seconds_before + time.perf_counter() - started,
            },
            ckpt_path,
        )

    checkpoint_every = int(train_params.get("checkpoint_every") or 0)
    started = time.perf_counter()
    progress = tqdm(total=total_steps, initial=step, desc="train captioner", unit="step")
    for epoch in range(start_epoch, epochs):
        epoch_shuffle_state = shuffle_gen.get_state()
        order = torch.randperm(len(pairs), generator=shuffle_gen).tolist()
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            if epoch == start_epoch and batch_index < start_batch:
                continue  # done before the checkpoint; its crops and masks are in the restored RNGs
            chunk = [pairs[k] for k in order[start : start + batch_size]]
            batch = build_batch(
                [train[i] for i, _ in chunk],
                max_frames=model.config.max_frames,
                use_clap=use_clap,
                crop_generator=crop_gen,
                caption_ids=[train_ids[i][j] for i, j in chunk],
            )
            # MCM masks are drawn on CPU from their own generator, then moved: device-independent.
            mcm_mask = model.mask_codes(batch.codes, batch.frame_mask, mcm_gen)
            optimizer.zero_grad(set_to_none=True)
            out = backward_batch(model, batch, mcm_mask, micro_batch, device, autocast)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            lr_used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1

            loss = out.loss.item()
            if first_step_loss is None:
                first_step_loss = loss
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss} at step {step}")
            window["loss"] += loss
            window["caption_loss"] += out.caption_loss.item()
            window["mcm_loss"] += out.mcm_loss.item()
            window["n"] += 1
            progress.update(1)
            if window["n"] == log_every or step == total_steps:
                means = {k: window[k] / window["n"] for k in ("loss", "caption_loss", "mcm_loss")}
                progress.set_postfix(loss=f"{means['loss']:.3f}", epoch=epoch + 1)
                if live is not None:
                    live.step = step
                    for key, value in means.items():
                        live.log_metric(f"train/{key}", value)
                    live.log_metric("train/lr", lr_used)
                last_window = {**means, "n": window["n"]}
                window = {"loss": 0.0, "caption_loss": 0.0, "mcm_loss": 0.0, "n": 0}
            if ckpt_path is not None and checkpoint_every and step % checkpoint_every == 0 and batch_index + 1 < steps_per_epoch:
                save_checkpoint(epoch, batch_index + 1, epoch_shuffle_state)

        if val:
            val_loss = evaluate_loss(
                model, val, val_ids, batch_size=batch_size, device=device, autocast=autocast
            )
            val_losses.append(val_loss)
            logger.info("epoch %d: val/loss %.4f", epoch + 1, val_loss)
            if live is not None:
                live.step = step
                live.log_metric("val/loss", val_loss)
                live.log_metric("epoch", epoch + 1, plot=False)
            # Early selection: keep the weights of the best validation epoch (on CPU).
            if val_loss < best_val:
                best_val, best_epoch = val_loss, epoch + 1
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if live is not None:
            live.make_summary()
        if ckpt_path is not None:
            save_checkpoint(epoch + 1, 0, shuffle_gen.get_state())
    progress.close()
    elapsed = seconds_before + time.perf_counter() - started

    if best_state is not None and best_epoch != epochs:
        logger.info("restoring the best validation epoch %d (val/loss %.4f)", best_epoch, best_val)
        model.load_state_dict(best_state)
    model.eval()
    summary = {
        "steps": step,
        "epochs": epochs,
        "first_step_loss": first_step_loss,
        "final_loss": last_window.get("loss"),
        "final_caption_loss": last_window.get("caption_loss"),
        "final_mcm_loss": last_window.get("mcm_loss"),
        "val_losses": val_losses,
        "best_epoch": best_epoch if best_state is not None else epochs,
        "best_val_loss": best_val if best_state is not None else None,
        "seconds_per_step": elapsed / max(step, 1),
        "n_parameters": n_params,
        "n_train_pairs": len(pairs),
        "vocab_size": len(tokenizer),
        "device": str(device),
        "pretrained": bool(model_params.get("pretrained")) or init_from is not None,
        "init_from": None if init_from is None else str(init_from),
        "seed": seed,
        "resumed_from_step": resumed_from,
    }
    _save_atomically(model.to("cpu"), tokenizer, summary, Path(out_dir))
    if live is not None:
        live.end()
    logger.info("saved captioner to %s (%d steps, %.3f s/step)", out_dir, step, summary["seconds_per_step"])
    return summary
