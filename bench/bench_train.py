"""Captioner training-step speed on the CPU: the demo model (params.yaml ``model``) and a
bart-base-sized one (d 768, 6 + 6 layers, 12 heads, FFN 3072, 50265-token vocabulary), each
with 16 codebooks, CLAP slot and MCM loss, exactly the step of :func:`clapart_core.captioner.training._optimisation_step`:

    build_batch + mask_codes (the data loader) -> forward -> backward -> clip -> AdamW step

Reported per model: encoder tokens (audio frames) per second, and the loader's share of the
step time, both measured in the same steps. The demo model also runs with eager attention in
the same run (transformers' ``attn_implementation="eager"``) against SDPA, which it uses by default.

    python -m bench.bench_train [--quick]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bench.common import line, set_threads
from clapart_core.captioner.data import CaptionExample, build_batch
from clapart_core.captioner.training import _optimizer, build_captioner
from clapart_core.pipeline.params import load_params

ROOT = Path(__file__).resolve().parent.parent
BART_BASE = {"vocab_size": 50265, "codebook_size": 1024, "d_model": 768, "encoder_layers": 6, "decoder_layers": 6, "attention_heads": 12, "ffn_dim": 3072}
CAPTION_TOKENS = 20  # a typical AudioCaps caption: ~10 words -> ~20 BPE ids with <s> and </s>


def _examples(n: int, frames: int, codebooks: int, k: int, vocab: int, rng: np.random.Generator) -> tuple[list[CaptionExample], list[list[int]]]:
    """``n`` clips of ``[frames, codebooks]`` random codes, a CLAP vector each, and one caption id list each."""
    examples = [CaptionExample(f"c{i}", rng.integers(0, k, (frames, codebooks)), rng.standard_normal(512).astype(np.float32), ("",)) for i in range(n)]
    captions = [[0, *rng.integers(3, vocab, CAPTION_TOKENS - 2).tolist(), 2] for _ in range(n)]
    return examples, captions


def step_times(model_params: dict, train_params: dict, batch: int, frames: int, steps: int, attn: str = "sdpa") -> tuple[float, float]:
    """Median (step seconds, loader seconds) over ``steps`` timed training steps after one warm-up."""
    torch.manual_seed(0)
    model = build_captioner(model_params, train_params, vocab_size=int(model_params["vocab_size"]), num_codebooks=16, clap_dim=512)
    model.bart.set_attn_implementation(attn)
    model.train()
    optimizer = _optimizer(model, float(train_params["lr"]), float(train_params["weight_decay"]))
    rng = np.random.default_rng(0)
    crop, mcm = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    examples, captions = _examples(batch, frames, 16, int(model_params["codebook_size"]), int(model_params["vocab_size"]), rng)
    total, loader = [], []
    for step in range(steps + 1):
        start = time.perf_counter()
        b = build_batch(examples, max_frames=model.config.max_frames, use_clap=True, crop_generator=crop, caption_ids=captions)
        mcm_mask = model.mask_codes(b.codes, b.frame_mask, mcm)
        loaded = time.perf_counter()
        out = model(b.codes, b.frame_mask, b.clap, labels=b.labels, mcm_mask=mcm_mask)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(train_params["grad_clip"]))
        optimizer.step()
        if step:  # the first step allocates the optimiser state and warms the kernels
            total.append(time.perf_counter() - start)
            loader.append(loaded - start)
    return float(np.median(total)), float(np.median(loader))


def main(quick: bool = False) -> Iterator[str]:
    """Yield the training lines. Full: demo model batch 8 × 496 frames (10 s clips), bart-base
    batch 2 × 496, median of 2 timed steps each; quick: the demo model at 4 × 192, median of 3."""
    threads = set_threads()
    params = load_params(ROOT / "params.yaml")
    demo = {**params["model"], "codebook_size": params["rvq"]["codebook_size"]}
    train = params["train"]
    tag = "_quick" if quick else ""
    runs = [("demo", demo, (4, 192) if quick else (8, 496))]
    if not quick:  # a bart-base step is seconds even at batch 1 (its 150 M-parameter AdamW update)
        runs.append(("bart_base", {**demo, **BART_BASE}, (2, 496)))
    steps = 3 if quick else 2  # quick steps are short: a median of 3 tames the occasional slow one
    for name, model_params, (batch, frames) in runs:
        seconds, loader = step_times(model_params, train, batch, frames, steps)
        size = f"d {model_params['d_model']}, {model_params['encoder_layers']}+{model_params['decoder_layers']} layers"
        yield line(
            f"train_step_{name}{tag}",
            batch * frames / seconds,
            "frames/s",
            f"{seconds:.2f} s/step, batch {batch} × {frames} frames × 16 codebooks, {size}, {threads} threads; "
            f"data loader {loader / seconds:.1%} of the step",
        )
        if name == "demo":
            eager, _ = step_times(model_params, train, batch, frames, steps, attn="eager")
            yield line(
                f"train_step_{name}_sdpa_vs_eager{tag}",
                batch * frames / seconds,
                "frames/s",
                f"{eager / seconds:.2f}x eager attention {batch * frames / eager:.0f} frames/s, same run",
            )
    if quick:
        yield line("train_step_bart_base_quick", 0, "frames/s", "skipped in --quick: the full run times batch 2 × 496 frames")


if __name__ == "__main__":
    for text in main(quick="--quick" in sys.argv):
        print(text, flush=True)
