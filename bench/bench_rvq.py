"""Residual k-means fit: the library's FAISS fit (:func:`fit_residual_codebooks`) against plain
Lloyd k-means, same sample, same initial centroids, same iterations, measured in one run.

Both baselines fit the same residual recursion (layer ``l`` on what layers ``< l`` leave) and
start every layer from FAISS's own initialisation: the first ``K`` rows of
``faiss.rand_perm(M, seed + l + 1)``, which is what ``faiss.Kmeans`` draws. They differ from
FAISS only where FAISS does more: it re-seeds empty clusters by splitting large ones, a plain
Lloyd keeps an empty cluster's old centroid.

* ``numpy Lloyd``: the textbook loop, ``argmin ‖c‖² − 2 x·cᵀ`` over the whole sample with
  numpy's BLAS, centroid sums with ``np.add.at``;
* ``torch Lloyd``: the same with the library's chunked GEMM (:func:`clapart_core.tokens.rvq.nearest`)
  and ``index_add_``, a strong baseline: it uses the same kernels as tokenization.

Reported: fit seconds, and the relative reconstruction error ``‖x − x̂‖² / ‖x‖²`` after all
layers on the fit sample and on a held-out sample of the same distribution. In full mode a
subprocess pair times one FAISS k-means after a plain ``import faiss`` (the wheel's OpenBLAS
picks its kernels itself: the generic ones on recent Xeons) and after :func:`import_faiss`.

    python -m bench.bench_rvq [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch

from bench.common import line, set_threads
from clapart_core.tokens.rvq import KMeansConfig, ResidualVQ, fit_residual_codebooks, import_faiss, nearest


def clustered_features(n: int, dim: int, seed: int, centers: int = 4096) -> np.ndarray:
    """``[n, dim]`` float32 frames around ``centers`` Gaussian centres (unit noise, centre scale 2):
    structure for k-means to find, with a residual that every layer keeps shrinking."""
    rng = np.random.default_rng(seed)
    means = 2.0 * np.random.default_rng(1234).standard_normal((centers, dim)).astype(np.float32)
    return means[rng.integers(0, centers, n)] + rng.standard_normal((n, dim)).astype(np.float32)


def faiss_init(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The ``k`` initial centroids ``faiss.Kmeans(seed=seed)`` draws from ``x [M, D]``: ``[k, D]``."""
    faiss = import_faiss()
    perm = np.empty(x.shape[0], dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), x.shape[0], seed + 1)  # Clustering::train: seed + 1 + 15486557 * redo
    return x[perm[:k]].copy()


def lloyd_numpy(x: np.ndarray, init: np.ndarray, niter: int) -> tuple[np.ndarray, list[float]]:
    """Plain Lloyd k-means: ``x [M, D]``, ``init [K, D]`` -> (centroids ``[K, D]``, objective per iteration).

    The objective of iteration ``i`` is ``Σ ‖x − c_assign‖²`` under the centroids it starts from
    (FAISS's convention), so it never increases.
    """
    c = init.astype(np.float32, copy=True)
    x_sq = (x.astype(np.float64) ** 2).sum()
    objective = []
    for _ in range(niter):
        dist = (c * c).sum(axis=1)[None, :] - 2.0 * (x @ c.T)  # [M, K], ‖x‖² dropped: constant per row
        assign = dist.argmin(axis=1)
        objective.append(float(x_sq + dist[np.arange(len(x)), assign].astype(np.float64).sum()))
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=len(c))[:, None]
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c).astype(np.float32)
    return c, objective


def lloyd_torch(x: np.ndarray, init: np.ndarray, niter: int) -> np.ndarray:
    """Lloyd k-means on the library's GEMM assignment: ``[M, D]``, ``[K, D]`` -> ``[K, D]``."""
    xt = torch.from_numpy(x)
    c = torch.from_numpy(init.copy())
    for _ in range(niter):
        assign = nearest(xt, c)
        sums = torch.zeros_like(c).index_add_(0, assign, xt)
        counts = torch.bincount(assign, minlength=c.shape[0])[:, None]
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    return c.numpy()


def residual_fit(x: np.ndarray, layers: int, k: int, niter: int, seed: int, kmeans) -> np.ndarray:
    """The library's residual recursion with a given single-layer k-means: ``[M, D] -> [L, K, D]``."""
    residual = x.copy()
    codebooks = np.empty((layers, k, x.shape[1]), dtype=np.float32)
    for layer in range(layers):
        codebooks[layer] = kmeans(residual, faiss_init(residual, k, seed + layer), niter)
        residual -= codebooks[layer][nearest(torch.from_numpy(residual), torch.from_numpy(codebooks[layer])).numpy()]
    return codebooks


def relative_error(x: np.ndarray, codebooks: np.ndarray) -> float:
    """``‖x − x̂‖² / ‖x‖²`` of the greedy residual encoding with all layers."""
    rvq = ResidualVQ(codebooks)
    recon = rvq.decode(rvq.encode(x)).numpy()
    return float(((x - recon).astype(np.float64) ** 2).sum() / (x.astype(np.float64) ** 2).sum())


_KERNEL_PROBE = """
import sys, time, numpy as np
if sys.argv[2] == "tuned":
    from clapart_core.tokens.rvq import import_faiss
    faiss = import_faiss()
else:
    import faiss
faiss.omp_set_num_threads(int(sys.argv[1]))
x = np.random.default_rng(0).standard_normal((20480, 768)).astype(np.float32)
km = faiss.Kmeans(768, 1024, niter=3, seed=1, max_points_per_centroid=1024)
t = time.perf_counter(); km.train(x); print(time.perf_counter() - t)
"""


def _probe(threads: int, mode: str) -> tuple[float, str]:
    """(seconds of a 3-iteration FAISS 1024-means in a fresh process, OpenBLAS kernel it ran).

    ``mode``: ``"raw"`` = a plain ``import faiss`` (the wheel's own CPU detection),
    ``"tuned"`` = :func:`import_faiss`.
    """
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["OPENBLAS_VERBOSE"] = "2"  # OpenBLAS prints "Core: <kernel family>" when it loads
    out = subprocess.run([sys.executable, "-c", _KERNEL_PROBE, str(threads), mode], env=env, capture_output=True, text=True, check=True)
    cores = [ln.split(":", 1)[1].strip() for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Core:")]
    return float(out.stdout.split()[-1]), cores[-1] if cores else "unknown"


def main(quick: bool = False) -> Iterator[str]:
    """Yield the fit lines. Full: 4 layers × 1024 codes, D = 768, 40960 frames, 6 iterations;
    quick: 2 × 256, 10240 frames, 5 iterations (both ~40 frames per centroid, FAISS's minimum 39)."""
    threads = set_threads()
    layers, k, niter = (2, 256, 5) if quick else (4, 1024, 6)
    dim, m, seed = 768, 40 * k, 1115
    x = clustered_features(m, dim, seed=0)
    held_out = clustered_features(m // 4, dim, seed=1)

    # one after the other, not interleaved: each takes seconds, and a repeat would double the run
    times, books = {}, {}
    for name, fit in (
        ("faiss", lambda: fit_residual_codebooks(x, layers, k, KMeansConfig(niter=niter, seed=seed))),
        ("numpy", lambda: residual_fit(x, layers, k, niter, seed, lambda r, c, n: lloyd_numpy(r, c, n)[0])),
        ("torch", lambda: residual_fit(x, layers, k, niter, seed, lloyd_torch)),
    ):
        start = time.perf_counter()
        books[name] = fit()
        times[name] = time.perf_counter() - start
    err = {name: (relative_error(x, cb), relative_error(held_out, cb)) for name, cb in books.items()}
    tag = "_quick" if quick else ""
    setting = f"{layers} layers × {k} codes, D={dim}, {m} frames, {niter} iterations, {threads} threads"
    yield line(f"rvq_fit_faiss{tag}", times["faiss"], "s", setting)
    for name, label in (("numpy", "numpy Lloyd"), ("torch", "torch GEMM Lloyd")):
        yield line(
            f"rvq_fit_faiss_vs_{name}_lloyd{tag}",
            times["faiss"],
            "s",
            f"{times[name] / times['faiss']:.2f}x faster than {label} {times[name]:.1f} s, same init/iterations/sample",
        )
    for name in ("faiss", "numpy", "torch"):
        fit_err, held_err = err[name]
        note = f"held-out {held_err:.4f}"
        if name != "faiss":
            note += f"; FAISS {err['faiss'][0]:.4f} is {err['faiss'][0] / fit_err:.4f}x this"
        yield line(f"rvq_fit_error_{name}{tag}", fit_err, "relative error on the fit sample", note)
    if not quick:
        (raw, raw_core), (tuned, tuned_core) = _probe(threads, "raw"), _probe(threads, "tuned")
        yield line(
            "rvq_faiss_openblas_kernels",
            tuned,
            "s",
            f"{raw / tuned:.2f}x a plain `import faiss` {raw:.2f} s; OpenBLAS kernels {tuned_core} vs {raw_core}; "
            "one 1024-means, 3 iterations, 20480 × 768",
        )

if __name__ == "__main__":
    for text in main(quick="--quick" in sys.argv):
        print(text, flush=True)
