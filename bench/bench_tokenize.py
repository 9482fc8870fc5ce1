"""Tokenization speed: ``ResidualVQ.encode`` with 16 layers × 1024 codes at D = 768 against the
fp32 GEMM bound of this machine, measured in the same run.

Encoding one frame costs ``2·D·K`` FLOPs per layer in the distance GEMM (the argmin and the
residual update are O(K) and O(D)), so ``16 · 2 · 768 · 1024 = 25.2 MFLOP`` per frame. The bound
is the throughput of exactly those GEMMs (``[rows, 768] @ [768, 1024]``, 16 per row block) run
alone, at the encoder's chunk size and at a large one, whichever is faster. Variants, interleaved:

* ``encode``: the library's :meth:`ResidualVQ.encode` (frame chunks outer, layers inner);
* ``layerwise``: the previous loop order, every frame through layer 1, then layer 2, ...;
* ``faiss``: one ``faiss.IndexFlatL2`` search per layer (FAISS's BLAS path).

    python -m bench.bench_tokenize [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import torch

from bench.common import line, measure, set_threads
from clapart_core.tokens.rvq import ResidualVQ, import_faiss, nearest

LAYERS, CODES, DIM = 16, 1024, 768
AUDIOCAPS_FRAMES = 25e6  # ~50k clips × 496 patches


def _layerwise(rvq: ResidualVQ, x: torch.Tensor) -> torch.Tensor:
    """The pre-issue-7 encode loop: ``[M, D] -> [M, N]``, all frames through one layer at a time."""
    residual = x.clone()
    codes = torch.empty(x.shape[0], rvq.num_layers, dtype=torch.long)
    for layer, cb in enumerate(rvq.codebooks):
        idx = nearest(residual, cb)
        codes[:, layer] = idx
        residual -= cb[idx]
    return codes


def _faiss_encode(codebooks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Residual encoding with one exact FAISS L2 index per layer: ``[M, D] -> [M, N]``."""
    faiss = import_faiss()
    indexes = []
    for cb in codebooks:
        index = faiss.IndexFlatL2(cb.shape[1])
        index.add(cb)
        indexes.append(index)
    residual = x.copy()
    codes = np.empty((x.shape[0], len(codebooks)), dtype=np.int64)
    for layer, (cb, index) in enumerate(zip(codebooks, indexes, strict=True)):
        _, idx = index.search(residual, 1)
        codes[:, layer] = idx[:, 0]
        residual -= cb[idx[:, 0]]
    return codes


def _gemms(x: torch.Tensor, codebooks: torch.Tensor, rows: int) -> None:
    """The distance GEMMs of an encoding and nothing else: 16 × ``[rows, D] @ [D, K]`` per row block."""
    out = torch.empty(rows, codebooks.shape[1])
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        for cb in codebooks:
            torch.mm(block, cb.T, out=out[: block.shape[0]])


def main(quick: bool = False) -> Iterator[str]:
    """Yield the tokenization lines; full: 16384 frames, median of 3; quick: 4096 frames, one timed call."""
    threads = set_threads()
    frames = 4096 if quick else 16384
    reps = 1 if quick else 3
    generator = torch.Generator().manual_seed(0)
    codebooks = 0.1 * torch.randn(LAYERS, CODES, DIM, generator=generator)
    x = torch.randn(frames, DIM, generator=generator)
    rvq = ResidualVQ(codebooks)
    x_np, cb_np = x.numpy(), codebooks.numpy()

    # the codes of each method, compared once; these calls double as the warm-up
    codes = rvq.encode(x)
    same = torch.equal(codes, _layerwise(rvq, x))
    agree = float((torch.from_numpy(_faiss_encode(cb_np, x_np)) == codes).double().mean())
    _gemms(x, codebooks, 8192)
    seconds = measure(
        {
            "encode": lambda: rvq.encode(x),
            "layerwise": lambda: _layerwise(rvq, x),
            "faiss": lambda: _faiss_encode(cb_np, x_np),
            "gemm_chunk": lambda: _gemms(x, codebooks, ResidualVQ.chunk),
            "gemm_large": lambda: _gemms(x, codebooks, 8192),
        },
        reps,
        warmup=False,
    )
    gflop = 2.0 * DIM * CODES * LAYERS * frames / 1e9
    bound = max(gflop / seconds["gemm_chunk"], gflop / seconds["gemm_large"])
    rate = {name: frames / s for name, s in seconds.items()}
    achieved = gflop / seconds["encode"]
    tag = "_quick" if quick else ""
    yield line(f"gemm_bound{tag}", bound, "GFLOP/s", f"fp32 [rows, {DIM}] @ [{DIM}, {CODES}], {threads} threads, same run")
    yield line(
        f"tokenize_encode{tag}",
        rate["encode"],
        "frames/s",
        f"{achieved / bound:.2f}x GEMM bound: {achieved:.0f} of {bound:.0f} GFLOP/s, {LAYERS} × {CODES} codes, D={DIM}, {frames} frames",
    )
    yield line(
        f"tokenize_encode_vs_layerwise{tag}",
        rate["encode"],
        "frames/s",
        f"{rate['encode'] / rate['layerwise']:.2f}x layer-by-layer loop {rate['layerwise']:.0f} frames/s; identical codes: {same}",
    )
    yield line(
        f"tokenize_encode_vs_faiss{tag}",
        rate["encode"],
        "frames/s",
        f"{rate['encode'] / rate['faiss']:.2f}x FAISS IndexFlatL2 {rate['faiss']:.0f} frames/s; same codes for {agree:.2%} of frames",
    )
    yield line(
        f"tokenize_audiocaps_estimate{tag}",
        AUDIOCAPS_FRAMES / rate["encode"] / 60,
        "min",
        f"AudioCaps: {AUDIOCAPS_FRAMES / 1e6:.0f}M frames at the measured encode rate, {threads} threads",
    )


if __name__ == "__main__":
    for text in main(quick="--quick" in sys.argv):
        print(text, flush=True)
