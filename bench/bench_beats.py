"""Speed of ``BEATs.extract_features`` on the CPU: batch 1 vs length-bucketed batches of 8.

Random weights (the compute is the same as with trained ones), float32, inference mode, all
cores (``bench.common.set_threads``). The clips have mixed lengths (half at the full 10 s,
the rest cut short), because that is where batching has to earn its keep:
equal-length clips need no padding at all, while mixed lengths in file order pad every batch
to its longest clip. Measured in the same run, interleaved (median of 2):

* ``b1``: the naive loop, one clip per call (no padding, per-call overheads paid per clip);
* ``b8_bucketed``: the features stage's loop, batches of 8 from
  :func:`clapart_core.encoders.beats_extract.length_buckets`, padded on the right, per-clip masks;
* ``file_order``: the same batches of 8 without bucketing;
* SDPA vs eager attention at batch 1 on one full-length clip.

The official implementation's 0.65 clips/s (batch 1, 10 s) is **quoted** from
shared/reference/beats/README.md (official code, a 2-core AMD EPYC, torch 2.13.0+cpu): another
machine, so that ratio is not a same-run comparison.

    python -m bench.bench_beats            # full config, 16 clips of 2-10 s (~1-2 min on 2 cores)
    python -m bench.bench_beats --quick    # smoke run: 2-layer model, clips of up to 2 s
    python -m bench.bench_beats --device cuda   # GPU: float32 vs bf16 autocast, batches 1/8/32,
                                                # and the GPU-vs-CPU difference of the features
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.common import set_threads
from clapart_core.encoders.beats import BEATs, num_patches, random_beats
from clapart_core.encoders.beats_extract import length_buckets

OFFICIAL_CLIPS_PER_S = {1: 0.65, 8: 0.58}  # quoted, see module docstring
SAMPLE_RATE = 16000


def _timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _measure(variants: dict[str, Callable[[], object]], reps: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds per call of each variant; variants alternate so load changes hit all alike."""
    for fn in variants.values() if warmup else ():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def _with_attention(model: BEATs, name: str, wave: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        model.set_attn_implementation(name)
        try:
            return model.extract_features(wave)
        finally:
            model.set_attn_implementation("sdpa")

    return run


def _gpu_lines(device: str, quick: bool) -> list[str]:
    """GPU throughput (float32 and bf16 autocast) and the GPU-vs-CPU deviation of the features."""
    overrides = {"encoder_layers": 2} if quick else {}
    cpu_model = random_beats(overrides, seed=0)
    model = random_beats(overrides, seed=0).to(device)
    generator = torch.Generator().manual_seed(0)
    lines: list[str] = []
    one = (0.1 * torch.randn(1, 10 * SAMPLE_RATE, generator=generator)).clamp(-1.0, 1.0)
    reference = cpu_model.extract_features(one)[0]
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        ours = model.extract_features(one.to(device), autocast_dtype=dtype)[0].cpu()
        diff = (ours - reference).abs()
        lines.append(
            f"beats_{device}_{label}_vs_cpu: {diff.max().item():.2e} max abs diff (mean {diff.mean().item():.2e}; "
            f"features up to {reference.abs().max().item():.1f})"
        )
    for batch in (1, 8, 32):
        wave = (0.1 * torch.randn(batch, 10 * SAMPLE_RATE, generator=generator)).clamp(-1.0, 1.0).to(device)
        median = _measure(
            {
                "fp32": lambda w=wave: model.extract_features(w),
                "bf16": lambda w=wave: model.extract_features(w, autocast_dtype=torch.bfloat16),
                "eager_fp32": _with_attention(model, "eager", wave),
            },
            reps=3,
        )
        rate = {name: batch / s for name, s in median.items()}
        lines.append(
            f"beats_extract_{device}_b{batch}: {rate['fp32']:.1f} clips/s ({rate['fp32'] / rate['eager_fp32']:.2f}x "
            f"eager attention {rate['eager_fp32']:.1f} clips/s, same run)"
        )
        lines.append(
            f"beats_extract_{device}_b{batch}_bf16: {rate['bf16']:.1f} clips/s ({rate['bf16'] / rate['fp32']:.2f}x fp32)"
        )
    return lines


def _clip_lengths(n: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Mixed lengths in samples: half the clips full length, the rest 20-90 % of it (YouTube
    clips cut short; AudioCaps has fewer of them, but with 16 clips a bucket needs 8), shuffled."""
    full = int(seconds * SAMPLE_RATE)
    short = (rng.uniform(0.2, 0.9, n) * full).astype(int)
    return np.where(np.arange(n) % 2 == 0, full, short)[rng.permutation(n)]


def _batched(model: BEATs, waves: list[torch.Tensor], batches: list[np.ndarray]) -> None:
    """The features stage's loop body: pad each batch on the right, mask, extract, keep valid rows."""
    for index in batches:
        lengths = torch.tensor([len(waves[i]) for i in index])
        wave = torch.zeros(len(index), int(lengths.max()))
        for row, i in enumerate(index):
            wave[row, : len(waves[i])] = waves[i]
        mask = torch.arange(wave.shape[1])[None, :] >= lengths[:, None]
        out, _ = model.extract_features(wave, padding_mask=mask)
        [out[row, : num_patches(len(waves[i]))] for row, i in enumerate(index)]


def main(quick: bool = False, device: str = "cpu") -> list[str]:
    """Run the benchmark and return its result lines (``name: value unit (ratio vs baseline)``).

    CPU: ``clips`` clips of AudioCaps-like mixed lengths, extracted three ways, interleaved:
    one clip at a time (the naive loop, batch 1), batches of 8 in length buckets (the features
    stage: :func:`clapart_core.encoders.beats_extract.length_buckets`), and batches of 8 in file order
    (what bucketing saves); plus SDPA vs eager attention at batch 1 on one full-length clip.
    Full: the BEATs_iter3_plus_AS2M config, 16 clips of up to 10 s; quick: 2 layers, 16 clips of
    up to 2 s. Real-time factor = seconds of audio per second of wall time.
    """
    threads = set_threads()
    if device != "cpu":
        return _gpu_lines(device, quick)
    overrides = {"encoder_layers": 2} if quick else {}
    seconds, clips, batch = (2.0, 16, 8) if quick else (10.0, 16, 8)
    reps = 1 if quick else 2
    tag = "_quick" if quick else ""
    model = random_beats(overrides, seed=0)
    generator = torch.Generator().manual_seed(0)
    lengths = _clip_lengths(clips, seconds, np.random.default_rng(0))
    waves = [(0.1 * torch.randn(int(n), generator=generator)).clamp(-1.0, 1.0) for n in lengths]
    audio_s = float(lengths.sum()) / SAMPLE_RATE
    bucketed = length_buckets(lengths, batch)
    file_order = [np.arange(i, min(i + batch, clips)) for i in range(0, clips, batch)]
    padded = {name: sum(len(b) * int(lengths[b].max()) for b in bs) / lengths.sum() - 1 for name, bs in (("bucketed", bucketed), ("file_order", file_order))}
    one = waves[int(np.argmax(lengths))][None]
    model.extract_features(one)  # warm-up
    median = _measure(
        {
            "loop": lambda: [model.extract_features(w[None]) for w in waves],
            "bucketed": lambda: _batched(model, waves, bucketed),
            "file_order": lambda: _batched(model, waves, file_order),
        },
        reps,
        warmup=False,
    )
    rate = {name: clips / s for name, s in median.items()}
    rtf = {name: audio_s / s for name, s in median.items()}
    size = "2-layer model" if quick else "BEATs_iter3_plus_AS2M config"
    setting = f"{clips} clips {lengths.min() / SAMPLE_RATE:.1f}-{seconds:.0f} s, {size}, fp32, {threads} threads"
    lines = [
        f"beats_extract_b1{tag}: {rate['loop']:.2f} clips/s (real-time factor {rtf['loop']:.1f}x; one clip at a time, {setting})",
        f"beats_extract_b{batch}_bucketed{tag}: {rate['bucketed']:.2f} clips/s ({rate['bucketed'] / rate['loop']:.2f}x one clip at a time, "
        f"same run; real-time factor {rtf['bucketed']:.1f}x; {padded['bucketed']:.0%} padding)",
        f"beats_extract_b{batch}_bucketed_vs_file_order{tag}: {rate['bucketed']:.2f} clips/s ({rate['bucketed'] / rate['file_order']:.2f}x "
        f"batches in file order {rate['file_order']:.2f} clips/s with {padded['file_order']:.0%} padding, same run)",
    ]
    attention = _measure({"sdpa": _with_attention(model, "sdpa", one), "eager": _with_attention(model, "eager", one)}, reps)
    lines.append(
        f"beats_extract_b1_sdpa_vs_eager{tag}: {1 / attention['sdpa']:.2f} clips/s ({attention['eager'] / attention['sdpa']:.2f}x eager "
        f"attention {1 / attention['eager']:.2f} clips/s, one {seconds:.0f} s clip, same run)"
    )
    if not quick:
        official = OFFICIAL_CLIPS_PER_S[1]
        lines.append(
            f"beats_extract_b1_vs_official: {1 / attention['sdpa']:.2f} clips/s ({1 / attention['sdpa'] / official:.2f}x official "
            f"{official} clips/s, quoted from the reference README, other machine: not a same-run baseline)"
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2-layer model, 2 s clips, one timed call")
    parser.add_argument("--device", default="cpu", help="cpu (default) or a GPU device such as cuda")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}")
    for line in main(quick=args.quick, device=args.device):
        print(line, flush=True)
