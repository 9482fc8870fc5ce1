"""Speed of ``BEATs.extract_features`` on the CPU: full-size BEATs_iter3_plus_AS2M config.

Random weights (the compute is the same as with trained ones), 10 s clips (160000 samples,
496 patches), no padding, float32, ``torch.set_num_threads(2)``, inference mode, one warm-up
call, then the median of 3 timed calls. Baselines:

* the official implementation: 0.65 clips/s at batch 1 and 0.58 clips/s at batch 8, **quoted**
  from shared/reference/beats/README.md (measured with the official code on a 2-core AMD EPYC,
  torch 2.13.0+cpu; not re-measured here, so the ratio also contains the machine difference);
* measured in the same run, interleaved with the timed calls: this model with the plain
  (eager softmax) attention instead of SDPA, and, at batch 8, the 8 clips run one by one.

    python bench/bench_beats.py            # full benchmark (about a minute on 2 cores)
    python bench/bench_beats.py --quick    # smoke run: 2-layer model, 2 s clips
    python bench/bench_beats.py --device cuda   # GPU: float32 vs bf16 autocast, batches 1/8/32,
                                                # and the GPU-vs-CPU difference of the features
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from clapart_core.beats import BEATs, random_beats

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


def _measure(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call of each variant; variants alternate so load changes hit all alike."""
    for fn in variants.values():
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


def main(quick: bool = False, device: str = "cpu") -> list[str]:
    """Run the benchmark and return its result lines (``name: value unit (ratio vs baseline)``)."""
    torch.set_num_threads(2)
    if device != "cpu":
        return _gpu_lines(device, quick)
    overrides = {"encoder_layers": 2} if quick else {}
    seconds = 2.0 if quick else 10.0
    batches = (1, 2) if quick else (1, 8)
    reps = 1 if quick else 3
    tag = "_quick" if quick else ""
    model = random_beats(overrides, seed=0)
    generator = torch.Generator().manual_seed(0)
    lines: list[str] = []
    for batch in batches:
        wave = (0.1 * torch.randn(batch, int(seconds * SAMPLE_RATE), generator=generator)).clamp(-1.0, 1.0)
        variants: dict[str, Callable[[], object]] = {
            "sdpa": _with_attention(model, "sdpa", wave),
            "eager": _with_attention(model, "eager", wave),
        }
        if batch > 1:
            variants["loop"] = lambda w=wave: [model.extract_features(w[i : i + 1]) for i in range(w.shape[0])]
        median = _measure(variants, reps)
        rate = {name: batch / s for name, s in median.items()}
        name = f"beats_extract_b{batch}{tag}"
        if quick:
            lines.append(f"{name}: {rate['sdpa']:.2f} clips/s (2-layer model, 2 s clips: not comparable to the official figure)")
        else:
            official = OFFICIAL_CLIPS_PER_S[batch]
            lines.append(
                f"{name}: {rate['sdpa']:.2f} clips/s ({rate['sdpa'] / official:.2f}x official {official} clips/s, "
                "quoted from the reference README, other machine)"
            )
        lines.append(
            f"{name}_vs_eager: {rate['sdpa']:.2f} clips/s ({rate['sdpa'] / rate['eager']:.2f}x eager attention "
            f"{rate['eager']:.2f} clips/s, same run)"
        )
        if "loop" in rate:
            lines.append(
                f"{name}_vs_loop: {rate['sdpa']:.2f} clips/s ({rate['sdpa'] / rate['loop']:.2f}x one clip at a time "
                f"{rate['loop']:.2f} clips/s, same run)"
            )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2-layer model, 2 s clips, one timed call")
    parser.add_argument("--device", default="cpu", help="cpu (default) or a GPU device such as cuda")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} -> 2 CPU threads, device {args.device}")
    for line in main(quick=args.quick, device=args.device):
        print(line, flush=True)
