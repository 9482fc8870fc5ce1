"""What is *not* bitwise deterministic in the CPU pipeline, and by how much.

Same params, seed and thread count give bitwise-identical features, codebooks, tokens and
training (``tests/test_determinism.py``). This script measures what changes when only the
*thread count* (or the batch composition) changes, at the demo profile's model sizes:

1. BEATs features (random BEATs of ``params.yaml`` beats.random, seeded) of clips of unequal
   length, ``torch`` intra-op threads 1 / 4 vs 2, and padded batches of 8 vs one clip at a time:
   max |Δ| in fp32, and how many values change once rounded to the fp16 the features stage stores.
2. Residual k-means (FAISS) on those features, OpenMP threads 1 / 4 vs 2: max |Δ| of the
   centroids, and the fraction of tokens that differ when each fit encodes the same frames.
3. RVQ encoding (``torch`` GEMM + argmin), threads 1 / 4 vs 2, same codebooks: differing codes.
4. Captioner training (demo model size), ``train.num_threads`` 1 / 4 vs 2: first-step loss,
   last-window loss and max |Δ| of the trained weights.

The baseline is 2 threads (the demo's ``train.num_threads``); ``--threads`` lists the counts
compared with it (more threads than cores is fine: the arithmetic is the same, only slower).
Every comparison also reruns the baseline with the same settings, which must give 0.

    python -m bench.determinism            # about 4 minutes on 2 busy cores
    python -m bench.determinism --quick    # smaller sizes, a smoke run
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from clapart_core.captioner.data import CaptionExample
from clapart_core.captioner.training import train_captioner
from clapart_core.encoders.beats import random_beats
from clapart_core.tokens.rvq import KMeansConfig, ResidualVQ, fit_residual_codebooks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16_000


def _audio(n_clips: int, seconds: float, seed: int) -> list[torch.Tensor]:
    """``n`` float32 clips of 0.5-1 x ``seconds``: tones + noise on the int16 grid (as decoded audio is stored)."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n_clips):
        t = np.arange(int(SAMPLE_RATE * seconds * rng.uniform(0.5, 1.0))) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.05 * rng.standard_normal(t.size)
        clips.append(torch.from_numpy((np.round(wave * 32767.0) / 32767.0).astype(np.float32)))
    return clips


def _features(model: torch.nn.Module, clips: list[torch.Tensor], threads: int, batch: int) -> np.ndarray:
    """``[sum T, D]`` fp32 BEATs features (each clip's valid patches), ``threads`` intra-op threads,
    ``batch`` zero-padded clips per call (with their padding mask, as the features stage does)."""
    from clapart_core.encoders.beats import num_patches

    torch.set_num_threads(threads)
    out = []
    with torch.inference_mode():
        for i in range(0, len(clips), batch):
            group = clips[i : i + batch]
            longest = max(len(c) for c in group)
            wave = torch.zeros(len(group), longest)
            mask = torch.ones(len(group), longest, dtype=torch.bool)
            for row, c in enumerate(group):
                wave[row, : len(c)], mask[row, : len(c)] = c, False
            feats, _ = model.extract_features(wave, padding_mask=mask)
            out += [feats[row, : num_patches(len(c))] for row, c in enumerate(group)]
    return torch.cat(out).float().numpy()


def _fit(x: np.ndarray, layers: int, k: int, niter: int, threads: int) -> np.ndarray:
    from clapart_core.tokens.rvq import import_faiss

    import_faiss().omp_set_num_threads(threads)
    torch.set_num_threads(threads)  # the residual update's nearest() uses torch
    return fit_residual_codebooks(x, layers, k, KMeansConfig(niter=niter, seed=1115))


def _encode(codebooks: np.ndarray, x: np.ndarray, threads: int) -> np.ndarray:
    torch.set_num_threads(threads)
    return ResidualVQ(codebooks).encode(torch.from_numpy(x)).numpy()


def _train(codes: np.ndarray, clips: int, threads: int, steps: int, out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A few steps of the demo-size captioner on ``codes`` split into ``clips`` clips."""
    from safetensors.torch import load_file

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    words = ["dog barks", "rain falls", "car passes", "bird sings", "man speaks", "water flows"]
    per_clip = np.array_split(codes.astype(np.int16), clips)
    train = [CaptionExample(f"c{i}", c, None, (f"a {words[i % 6]} in the distance",)) for i, c in enumerate(per_clip)]
    model_params = {**params["model"], "codebook_size": int(codes.max()) + 1, "use_clap": False}
    batch = max(1, len(train) // steps)
    train_params = {**params["train"], "epochs": 1, "batch_size": batch, "device": "cpu", "num_threads": threads, "log_every": steps}
    summary = train_captioner(train, [], model_params=model_params, train_params=train_params, out_dir=out, live_dir=None, seed=1115)
    return summary, load_file(out / "model.safetensors")


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--threads", default="1,4", help="thread counts compared with the baseline of 2 (more than the cores is fine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    others = [int(t) for t in args.threads.split(",")]
    n_clips, seconds, layers, k, niter, steps = (8, 2.0, 2, 16, 4, 3) if args.quick else (32, 4.0, 8, 64, 15, 8)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; {n_clips} clips of {seconds / 2}-{seconds} s; baseline 2 threads")

    # 1. BEATs features
    beats = random_beats(params["beats"]["random"], seed=params["seed"]).eval()
    clips = _audio(n_clips, seconds, seed=0)
    base = _features(beats, clips, threads=2, batch=8)
    scale = float(np.abs(base).max())
    variants = {"rerun": _features(beats, clips, threads=2, batch=8), "batch_1_vs_8": _features(beats, clips, threads=2, batch=1)}
    variants.update({f"threads_{t}_vs_2": _features(beats, clips, threads=t, batch=8) for t in others})
    for name, other in variants.items():
        d = _max_abs(base, other)
        h16 = np.mean(base.astype(np.float16) != other.astype(np.float16))
        print(
            f"beats_features_{name}: max |diff| {d:.3g} (max |x| {scale:.3g}, relative {d / scale:.2g}); fp16-stored values "
            f"that differ {h16:.3%}, by at most {_max_abs(base.astype(np.float16), other.astype(np.float16)):.3g}"
        )

    # 2. residual k-means on the stored (fp16) features, and 3. encoding with fixed codebooks
    x = base.astype(np.float16).astype(np.float32)
    cb = _fit(x, layers, k, niter, threads=2)
    codes = _encode(cb, x, threads=2)
    for t in [2, *others]:
        other_cb = _fit(x, layers, k, niter, threads=t)
        changed = [float(np.mean(codes[:, layer] != _encode(other_cb, x, threads=2)[:, layer])) for layer in range(layers)]
        name = "rerun" if t == 2 else f"threads_{t}_vs_2"
        print(
            f"kmeans_{name}: max |diff| of centroids {_max_abs(cb, other_cb):.3g} (max |c| {float(np.abs(cb).max()):.3g}); "
            f"tokens that differ per layer: {', '.join(f'{c:.2%}' for c in changed)}"
        )
    for t in others:
        print(f"rvq_encode_threads_{t}_vs_2: codes that differ {np.mean(_encode(cb, x, threads=t) != codes):.4%} of {codes.size}")

    # 4. captioner training
    def wdiff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)

    with tempfile.TemporaryDirectory() as tmp:
        s_base, w_base = _train(codes, n_clips, 2, steps, Path(tmp) / "base")
        for t in [2, *others]:
            s, w = _train(codes, n_clips, t, steps, Path(tmp) / f"t{t}")
            name = "rerun" if t == 2 else f"threads_{t}_vs_2"
            print(
                f"train_{name} ({s['steps']} steps of the demo-size model): first-step loss {s['first_step_loss']:.9g} vs "
                f"{s_base['first_step_loss']:.9g} (diff {abs(s['first_step_loss'] - s_base['first_step_loss']):.3g}); "
                f"last-window loss diff {abs(s['final_loss'] - s_base['final_loss']):.3g}; max |weight diff| {wdiff(w, w_base):.3g}"
            )


if __name__ == "__main__":
    main()
