"""One prepared GPU check (run on a lent GPU machine): the captioner's CUDA + bf16 training path
and beam search, step timings for the demo-sized and a bart-base-sized captioner (fp32 and bf16),
and the residual k-means fit on the GPU: FAISS GPU when the installed FAISS has GPUs, else a
line saying so, and a torch CUDA Lloyd with the same init and iterations either way; the codebooks
stage's own switch (``rvq.kmeans.gpu: true``, all visible GPUs) against FAISS on the CPU on the
same sample; and the `features` stage with 1 process vs one process per GPU (issue 14); and the
training loop on 1 GPU vs one process per GPU (``train.num_processes``, NCCL under accelerate
launch; :mod:`bench.bench_ddp`) where 2 or more GPUs are visible, else a line saying why not.

    python -m bench.gpu_check        # prints `name: value unit` lines
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_extract import extraction_lines
from clapart_core.captioner.data import CaptionExample
from clapart_core.captioner.generate import caption_examples
from clapart_core.captioner.model import ClapArtConfig, ClapArtForCaptioning, sample_mcm_mask, small_bart_config
from clapart_core.captioner.model_dir import load_captioner
from clapart_core.captioner.training import train_captioner
from clapart_core.pipeline.errors import ParamsError
from clapart_core.tokens.rvq import KMeansConfig, fit_residual_codebooks, import_faiss, kmeans_gpus, quantisation_report


def examples(n: int, frames: int, codebooks: int, k: int, seed: int) -> list[CaptionExample]:
    """Captions determined by the codes, so a few epochs must lower the loss."""
    rng = np.random.default_rng(seed)
    words = ["a dog barks", "rain falls", "a bell rings", "a siren wails"]
    out = []
    for i in range(n):
        label = i % len(words)
        codes = rng.integers(0, k, (frames, codebooks))
        codes[:, 0] = label  # the first codebook carries the class
        out.append(CaptionExample(f"c{i}", codes, rng.standard_normal(512).astype(np.float32), (words[label],)))
    return out


def step_time(d_model: int, layers: int, heads: int, ffn: int, frames: int, batch: int, dtype: torch.dtype | None) -> float:
    bart = small_bart_config(
        vocab_size=50265, d_model=d_model, encoder_layers=layers, decoder_layers=layers, attention_heads=heads, ffn_dim=ffn, dropout=0.1, max_frames=1020
    )
    cfg = ClapArtConfig(bart=bart, num_codebooks=16, codebook_size=1024)
    model = ClapArtForCaptioning(cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    codes = torch.randint(0, 1024, (batch, frames, 16), device="cuda")
    labels = torch.randint(3, 50265, (batch, 24), device="cuda")
    clap = torch.randn(batch, 512, device="cuda")
    # MCM mask drawn on the CPU generator, as training does, then moved
    mcm = sample_mcm_mask(torch.ones(batch, frames, dtype=torch.bool), 16, 0.15, 10, torch.Generator().manual_seed(0)).cuda()
    times = []
    for _ in range(8):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = model(codes=codes, clap=clap, labels=labels, mcm_mask=mcm).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times[3:]))


def lloyd_fit(x: torch.Tensor, layers: int, k: int, niter: int, seed: int) -> torch.Tensor:
    """Residual Lloyd k-means on ``x``'s device from FAISS's initial centroids: ``[M, D] -> [L, K, D]``."""
    from bench.bench_rvq import faiss_init

    def assign(points: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.addmm((c * c).sum(1), points, c.T, beta=1.0, alpha=-2.0).argmin(1)

    residual = x.clone()
    books = []
    for layer in range(layers):
        c = torch.from_numpy(faiss_init(residual.cpu().numpy(), k, seed + layer)).to(x.device)
        for _ in range(niter):
            idx = assign(residual, c)
            sums = torch.zeros_like(c).index_add_(0, idx, residual)
            counts = torch.bincount(idx, minlength=k)[:, None]
            c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        residual -= c[assign(residual, c)]
        books.append(c)
    return torch.stack(books)


def kmeans_lines(m: int = 262144, d: int = 768, layers: int = 4, k: int = 1024, niter: int = 10) -> list[str]:
    """FAISS GPU residual k-means (if available) and a torch CUDA Lloyd, same sample and iterations."""
    x = np.random.default_rng(0).standard_normal((m, d)).astype(np.float32)
    setting = f"{layers} layers × {k} codes, D={d}, {m} frames, {niter} iterations"
    lines = []
    faiss = import_faiss()
    if faiss.get_num_gpus() > 0:
        t = time.perf_counter()
        fit_residual_codebooks(x, layers, k, KMeansConfig(niter=niter, seed=1115, gpu=True))
        lines.append(f"gpu_rvq_fit_faiss: {time.perf_counter() - t:.2f} s ({setting}, {faiss.get_num_gpus()} GPU)")
    else:
        lines.append(f"gpu_rvq_fit_faiss: unavailable (faiss {faiss.__version__} sees no GPU: install faiss-gpu, `pip install .[gpu]`)")
    xt = torch.from_numpy(x).cuda()
    lloyd_fit(xt[: 4 * k], 1, k, 1, 1115)  # warm-up (cuBLAS handles, kernels)
    torch.cuda.synchronize()
    t = time.perf_counter()
    books = lloyd_fit(xt, layers, k, niter, 1115)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    recon = torch.zeros_like(xt)
    residual = xt.clone()
    for c in books:
        assign = torch.addmm((c * c).sum(1), residual, c.T, beta=1.0, alpha=-2.0).argmin(1)
        recon += c[assign]
        residual -= c[assign]
    err = float(((xt - recon).double() ** 2).sum() / (xt.double() ** 2).sum())
    lines.append(f"gpu_rvq_fit_torch_lloyd: {seconds:.2f} s ({setting}, fp32, relative error {err:.4f})")
    return lines


def ddp_lines(max_processes: int = 4) -> list[str]:
    """Training steps/s on 1 GPU vs one process per GPU (up to ``max_processes``), same global batch."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return [f"gpu_train_ddp: unavailable ({gpus} GPU visible; NCCL runs one process per GPU, so N processes need N GPUs)"]
    from bench.bench_ddp import compare

    return list(compare("cuda", min(gpus, max_processes), 64, 496, 12))


def kmeans_switch_lines(m: int = 131072, d: int = 768, layers: int = 2, k: int = 1024, niter: int = 10) -> list[str]:
    """The codebooks stage's fit with ``rvq.kmeans.gpu: true`` (FAISS on every visible GPU) vs
    ``false`` (FAISS on the CPU), same sample, seed and iterations: time and relative error."""
    x = np.random.default_rng(1).standard_normal((m, d)).astype(np.float32)
    setting = f"{layers} layers × {k} codes, D={d}, {m} frames, {niter} iterations"
    try:
        gpus = kmeans_gpus(True)
    except ParamsError as err:  # no faiss-gpu or no GPU: the stage's own one-sentence error
        return [f"codebooks_fit_gpu_true: unavailable ({err})"]
    lines = []
    for name, n in (("gpu_true", gpus), ("gpu_false", 0)):
        t = time.perf_counter()
        books = fit_residual_codebooks(x, layers, k, KMeansConfig(niter=niter, seed=1115, gpu=n))
        seconds = time.perf_counter() - t
        err = quantisation_report(x, books)[-1]["relative_error"]
        where = f"{n} GPU" if n else f"CPU, {torch.get_num_threads()} threads"
        lines.append(f"codebooks_fit_{name}: {seconds:.2f} s ({setting}, {where}, relative error {err:.4f})")
    return lines


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    for line in ddp_lines():
        print(line, flush=True)
    for line in kmeans_lines():
        print(line, flush=True)
    for line in kmeans_switch_lines():
        print(line, flush=True)
    # sharded extraction: full-size random BEATs, 1 process vs one per GPU (2 on one GPU)
    for line in extraction_lines(96, {}, (1, max(2, torch.cuda.device_count())), device="cuda"):
        print(line, flush=True)
    out = Path("/tmp/clapart_gpu_model")
    data = examples(256, 192, 16, 256, 0)
    model_params = {
        "pretrained": None, "tokenizer": None, "vocab_size": 300, "codebook_size": 256, "d_model": 256, "encoder_layers": 3,
        "decoder_layers": 3, "attention_heads": 4, "ffn_dim": 1024, "dropout": 0.1, "use_clap": True, "max_frames": 1020,
    }
    train_params = {
        "epochs": 4, "batch_size": 32, "lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.01, "label_smoothing": 0.2, "grad_clip": 1.0,
        "mcm_weight": 0.7, "mcm_prob": 0.15, "mcm_span": 10, "device": "cuda", "bf16": True, "num_threads": 4,
    }
    summary = train_captioner(data, data[:64], model_params=model_params, train_params=train_params, out_dir=out, live_dir=None, seed=1115)
    print(f"gpu_train_bf16_first_loss: {summary['first_step_loss']:.3f}", flush=True)
    print(f"gpu_train_bf16_val_losses: {', '.join(f'{v:.3f}' for v in summary['val_losses'])}", flush=True)
    print(f"gpu_train_bf16_step: {summary['seconds_per_step'] * 1000:.1f} ms/step (demo size, batch 32, T=192, N=16)", flush=True)
    model, tok = load_captioner(out)
    model = model.cuda()
    caps = caption_examples(model, tok, data[:8], num_beams=4)
    right = sum(c.strip().lower().rstrip(".") == ex.captions[0] for c, ex in zip(caps, data[:8], strict=True))
    print(f"gpu_beam_search: {right}/8 captions exact ({caps[0]!r})", flush=True)
    for name, dims in (("demo", (256, 3, 4, 1024)), ("bart_base", (768, 6, 12, 3072))):
        times = {}
        for dtype, tag in ((None, "fp32"), (torch.bfloat16, "bf16")):
            t = times[tag] = step_time(*dims, frames=496, batch=16, dtype=dtype)
            print(f"gpu_step_{name}_{tag}: {t * 1000:.1f} ms/step ({16 * 498 / t:.0f} encoder tokens/s, batch 16, T=496, N=16)", flush=True)
        print(f"gpu_step_{name}_bf16_vs_fp32: {times['fp32'] / times['bf16']:.2f}x (bf16 autocast step speed-up, same run)", flush=True)


if __name__ == "__main__":
    main()
