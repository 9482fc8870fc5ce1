"""Residual vector quantisation of BEATs patch features (the "ART" in CLAP-ART).

CLAP-ART turns each BEATs patch feature ``x ∈ R^D`` into ``N`` discrete codes with a residual
quantiser whose ``L`` codebooks (``L × K × D``) are fitted by k-means on training-set features:
layer ``l`` is fitted on what layers ``1..l-1`` leave over, and encoding is greedy
(nearest centroid per layer, then subtract it).

Because fitting and encoding are both greedy, layer ``l`` never depends on layers ``> l``:
the first ``k`` codebooks of a seeded ``L``-layer fit *are* the ``k``-layer fit (each layer gets
its own seed ``seed + l``, independent of ``L``), and the first ``k`` codes of an ``L``-layer
encoding are the ``k``-layer encoding. The pipeline relies on this: ``codebooks`` fits
``rvq.max_layers`` once and ``tokenize`` keeps the first ``rvq.layers``.

Shapes: ``x [..., D] -> codes [..., N]`` with ``N <= L``; ``codes [..., N] -> x̂ [..., D]``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clapart_core.pipeline.atomic import atomic_path
from clapart_core.pipeline.errors import ParamsError
from clapart_core.pipeline.storage import RaggedReader

log = logging.getLogger(__name__)


#: FAISS's floor: with fewer sample points per centroid its k-means warns ("please provide at
#: least 39*K training points"), and the centroids fit the sample rather than the features
#: (at 2 per centroid the rehearsal's reduced run reached 0 residual energy on the sample)
MIN_POINTS_PER_CENTROID = 39


@dataclass(frozen=True)
class KMeansConfig:
    """FAISS k-means settings for one codebook layer.

    ``niter`` Lloyd iterations; ``seed`` is offset by the layer index so that layer ``l``'s fit
    is the same whatever the total number of layers. ``gpu``: FAISS's ``Kmeans(gpu=...)``: False
    or 0 on the CPU, True for all visible GPUs, ``n`` for the first ``n`` (:func:`kmeans_gpus`).
    """

    niter: int = 20
    seed: int = 1115
    gpu: bool | int = False


def _openblas_coretype() -> str | None:
    """The OpenBLAS kernel family this x86 CPU can run, from its /proc/cpuinfo flags (None elsewhere)."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= set(flags):
        return "SKYLAKEX"
    if {"avx2", "fma"} <= set(flags):
        return "HASWELL"
    return None


def import_faiss() -> Any:
    """Import FAISS, first making sure its bundled OpenBLAS uses this CPU's vector kernels.

    The faiss-cpu wheels bundle an OpenBLAS (0.3.15 in faiss-cpu 1.15) whose runtime CPU
    detection predates recent Xeons: on a Sapphire/Emerald Rapids core it falls back to the
    generic "Prescott" SSE kernels, and k-means runs ~4x slower (measured: 29 vs 110 GFLOP/s
    in the assignment GEMM on 2 cores, bench/bench_rvq.py). OpenBLAS reads
    ``OPENBLAS_CORETYPE`` once, when the library loads, so it is set here before the first
    import (only if unset, and only to a kernel family the CPU's flags support). numpy's and
    torch's BLAS are loaded earlier and are not affected.
    """
    import sys

    if "faiss" not in sys.modules and "OPENBLAS_CORETYPE" not in os.environ:
        coretype = _openblas_coretype()
        if coretype is not None:
            os.environ["OPENBLAS_CORETYPE"] = coretype
    import faiss  # imported lazily: only the codebooks stage and benchmarks need it

    return faiss


def kmeans_gpus(setting: str | bool) -> int:
    """How many GPUs FAISS k-means runs on for ``rvq.kmeans.gpu`` = ``setting`` (0: the CPU).

    ``auto``: every GPU FAISS sees (none with the faiss-cpu wheel); ``true``: the same, but none is
    an error (:class:`ParamsError`, one sentence); ``false``: the CPU.
    """
    if setting is False:
        return 0
    faiss = import_faiss()
    gpus = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if setting == "auto" or gpus > 0:
        return gpus
    if not hasattr(faiss, "GpuIndexFlatL2"):
        raise ParamsError(f"rvq.kmeans.gpu is true but the installed FAISS {faiss.__version__} has no GPU support: install faiss-gpu, or set it auto or false")
    raise ParamsError("rvq.kmeans.gpu is true but FAISS sees no GPU (CUDA_VISIBLE_DEVICES, driver): run on a GPU machine, or set it auto or false")


def fit_residual_codebooks(
    x: np.ndarray, num_layers: int, codebook_size: int, config: KMeansConfig = KMeansConfig()
) -> np.ndarray:
    """Fit ``num_layers`` residual k-means codebooks on a sample of features.

    Args:
        x: ``[M, D]`` float32 training features (the sample; it is not modified).
        num_layers: ``L``, number of residual layers.
        codebook_size: ``K``, centroids per layer.
        config: k-means iterations, seed, GPU switch.

    Returns:
        ``[L, K, D]`` float32 codebooks.
    """
    faiss = import_faiss()

    if x.ndim != 2:
        raise ValueError(f"expected [M, D] features, got shape {x.shape}")
    m, d = x.shape
    if m < codebook_size:  # a corpus too small for the setting: the user's to fix, one line
        raise ParamsError(
            f"cannot fit {codebook_size} centroids on {m} feature frames: "
            "lower rvq.codebook_size or use more training audio"
        )
    if m < MIN_POINTS_PER_CENTROID * codebook_size:
        # a warning, not an error: small corpora (tests, rehearsals) must still run end to end
        log.warning(
            "rvq: %d sample frames for %d centroids per layer is %.1f per centroid, under the %d FAISS asks for: "
            "the codebooks will fit the sample, not the features; use at least %d frames (~%d clips of 10 s, "
            "rvq.kmeans.max_samples permitting) or lower rvq.codebook_size",
            m, codebook_size, m / codebook_size, MIN_POINTS_PER_CENTROID,
            MIN_POINTS_PER_CENTROID * codebook_size, math.ceil(MIN_POINTS_PER_CENTROID * codebook_size / 496),  # 496 patches per 10 s
        )
    residual = np.ascontiguousarray(x, dtype=np.float32).copy()
    codebooks = np.empty((num_layers, codebook_size, d), dtype=np.float32)
    for layer in range(num_layers):
        kmeans = faiss.Kmeans(
            d,
            codebook_size,
            niter=config.niter,
            seed=config.seed + layer,
            # FAISS silently subsamples to 256 points per centroid unless told otherwise; the
            # sample size is already capped by the caller (rvq.kmeans.max_samples), so use it all.
            max_points_per_centroid=max(256, math.ceil(m / codebook_size)),
            gpu=config.gpu,
            verbose=False,
        )
        kmeans.train(residual)
        codebooks[layer] = kmeans.centroids
        codes = nearest(torch.from_numpy(residual), torch.from_numpy(codebooks[layer]))
        residual -= codebooks[layer][codes.numpy()]
        log.info(
            "rvq layer %d/%d: relative residual energy %.4f",
            layer + 1,
            num_layers,
            float((residual.astype(np.float64) ** 2).sum() / (x.astype(np.float64) ** 2).sum()),
        )
    return codebooks


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192, c_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) for each row.

    Uses ``argmin ‖c‖² − 2 x·c`` (``‖x‖²`` is constant per row), one GEMM per chunk of rows.
    Ties go to the lowest index (``torch.argmin`` semantics).

    Args:
        x: ``[M, D]`` float32.
        centroids: ``[K, D]`` float32.
        chunk: rows per GEMM (bounds the ``[chunk, K]`` distance block).
        c_sq: ``[K]`` precomputed ``‖c‖²`` (computed here when None).
    Returns:
        ``[M]`` int64.
    """
    if c_sq is None:
        c_sq = (centroids * centroids).sum(dim=1)  # [K]
    out = torch.empty(x.shape[0], dtype=torch.long)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]
        # addmm fuses the scale and the bias add: c_sq - 2 x c^T
        dist = torch.addmm(c_sq, block, centroids.T, beta=1.0, alpha=-2.0)
        out[start : start + chunk] = dist.argmin(dim=1)
    return out


class ResidualVQ:
    """Greedy residual quantiser over fixed codebooks.

    Args:
        codebooks: ``[L, K, D]`` float32 (e.g. from :func:`fit_residual_codebooks`).
        num_layers: ``N <= L`` layers to use; defaults to all.
    """

    #: frames encoded through all layers at a time: the residual (chunk × D) and the distance
    #: block (chunk × K) stay in cache across the N layers instead of streaming all frames
    #: through memory once per layer (bench/bench_tokenize.py: ~1.2x at 16 × 1024, D = 768;
    #: 1024-4096 measured alike on an idle machine, the larger means fewer thread barriers)
    chunk = 4096

    def __init__(self, codebooks: np.ndarray | torch.Tensor, num_layers: int | None = None) -> None:
        cb = torch.as_tensor(np.asarray(codebooks, dtype=np.float32))
        if cb.ndim != 3:
            raise ValueError(f"codebooks must be [L, K, D], got shape {tuple(cb.shape)}")
        n = cb.shape[0] if num_layers is None else num_layers
        if not 1 <= n <= cb.shape[0]:
            raise ValueError(f"num_layers={n} but the codebook file holds {cb.shape[0]} layers")
        self.codebooks = cb[:n].contiguous()  # [N, K, D]
        self.c_sq = (self.codebooks * self.codebooks).sum(dim=2)  # [N, K], ‖c‖² once, not per call

    @property
    def num_layers(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    @torch.inference_mode()
    def encode(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[..., D]`` float -> ``[..., N]`` int64 codes.

        Per row the same arithmetic as :func:`nearest` layer by layer (so the same codes and
        ties); only the loop order differs: chunks of frames outer, layers inner.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        lead, d = x.shape[:-1], x.shape[-1]
        flat = x.reshape(-1, d)
        codes = torch.empty(flat.shape[0], self.num_layers, dtype=torch.long)
        for start in range(0, flat.shape[0], self.chunk):
            residual = flat[start : start + self.chunk].clone()
            for layer, (cb, c_sq) in enumerate(zip(self.codebooks, self.c_sq, strict=True)):
                idx = nearest(residual, cb, chunk=self.chunk, c_sq=c_sq)
                codes[start : start + self.chunk, layer] = idx
                residual -= cb[idx]
        return codes.reshape(*lead, self.num_layers)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[..., n]`` codes (``n <= N``) -> ``[..., D]`` float32 reconstruction."""
        codes = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        out = torch.zeros(*codes.shape[:-1], self.codebooks.shape[2])
        for layer in range(codes.shape[-1]):
            out += self.codebooks[layer][codes[..., layer]]
        return out


def quantisation_report(x: np.ndarray, codebooks: np.ndarray) -> list[dict[str, float]]:
    """Per-layer quality of a residual fit on features ``x [M, D]``.

    For each depth ``l = 1..L``: ``relative_error`` = ‖x − x̂_l‖² / ‖x‖² (summed over rows) and
    ``perplexity`` = exp(entropy) of layer ``l``'s code histogram (``K`` = all codes used evenly,
    1 = collapse), plus ``used`` = fraction of codes used at least once.
    """
    rvq = ResidualVQ(codebooks)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    codes = rvq.encode(xt)
    energy = float((xt.double() ** 2).sum())
    recon = torch.zeros_like(xt)
    report = []
    for layer in range(rvq.num_layers):
        recon += rvq.codebooks[layer][codes[:, layer]]
        err = float(((xt - recon).double() ** 2).sum()) / max(energy, 1e-30)
        counts = torch.bincount(codes[:, layer], minlength=rvq.codebook_size).double()
        p = counts / counts.sum()
        entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
        report.append(
            {
                "layer": layer + 1,
                "relative_error": err,
                "perplexity": math.exp(entropy),
                "used": float((counts > 0).double().mean()),
            }
        )
    return report


def save_codebooks(path: Path | str, codebooks: np.ndarray, **meta: Any) -> None:
    """Write ``rvq.npz``: ``codebooks [L, K, D] float32`` plus scalar fit metadata.

    The zip entries get a fixed timestamp (``np.savez`` stamps the current time), so the same
    fit always yields the same bytes and DVC sees an unchanged output after a rerun.
    Written to a temporary name and renamed, so a killed stage leaves no complete-looking file.
    """
    arrays = {"codebooks": np.ascontiguousarray(codebooks, dtype=np.float32), "meta": np.array(json.dumps(meta, sort_keys=True))}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def load_codebooks(path: Path | str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read ``rvq.npz`` -> (``[L, K, D]`` float32 codebooks, fit metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the codebooks stage first")
    with np.load(path, allow_pickle=False) as f:
        return f["codebooks"], json.loads(str(f["meta"]))


def features_fingerprint(path: Path | str) -> dict[str, Any]:
    """What codebooks fitted on the features file ``path`` apply to: the encoder that made them
    (its name, spec — checkpoint or random config, layer — whether pretrained, and the sha256 of
    its weights, so two random encoders of one config but other seeds differ) and ``dim``, the
    feature dimension ``D``. Stored in every ``rvq.npz`` (``meta["encoder"]``)."""
    with RaggedReader(path) as reader:
        attrs, dim = reader.attrs, int(reader.data.shape[1])
    spec = attrs.get("spec")
    return {
        "encoder": str(attrs.get("encoder")),
        "spec": json.loads(spec) if isinstance(spec, str) else spec,
        "pretrained": bool(attrs.get("pretrained")),
        "weights_sha256": str(attrs.get("weights_sha256")),
        "dim": dim,
    }


def _mismatch(theirs: dict[str, Any], ours: dict[str, Any]) -> str | None:
    """The first way two :func:`features_fingerprint` differ, in words; None if they match."""
    if theirs.get("dim") != ours["dim"]:
        return f"its codebooks are {theirs.get('dim')}-dimensional but this run's features are {ours['dim']}-dimensional"
    if theirs.get("encoder") != ours["encoder"]:
        return f"it was fitted on {theirs.get('encoder')} features, this run encodes with {ours['encoder']}"
    if bool(theirs.get("pretrained")) != ours["pretrained"]:
        kinds = {True: "a pretrained", False: "a random"}
        return f"it was fitted on {kinds[bool(theirs.get('pretrained'))]} encoder's features, this run's encoder is {kinds[ours['pretrained']][2:]}"
    # the checkpoint's path differs from machine to machine (its weights' sha256 below is what
    # identifies it), and a pretrained encoder ignores the random config and seed
    ignored = {"checkpoint"} | ({"random", "seed"} if ours["pretrained"] else set())
    spec_a, spec_b = theirs.get("spec") or {}, ours["spec"] or {}
    keys = [k for k in sorted((set(spec_a) | set(spec_b)) - ignored) if spec_a.get(k) != spec_b.get(k)]
    if keys:
        k = keys[0]
        return f"its encoder's {k} is {json.dumps(spec_a.get(k))}, this run's is {json.dumps(spec_b.get(k))}"
    if theirs.get("weights_sha256") != ours["weights_sha256"]:
        return f"its encoder weights (sha256 {str(theirs.get('weights_sha256'))[:12]}) are not this run's ({ours['weights_sha256'][:12]})"
    return None


def check_codebooks_file(path: Path | str, fingerprint: dict[str, Any], codebook_size: int, max_layers: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Load an ``rvq.npz`` fitted elsewhere (params ``rvq.codebooks_file``) and check that it
    applies to this run: fitted on features of the same encoder (:func:`features_fingerprint`:
    name, spec, weights, dimension), ``codebook_size`` centroids per layer, at least ``max_layers`` layers.

    Returns:
        (its first ``max_layers`` codebooks ``[max_layers, K, D]`` float32, its fit metadata).
    Raises:
        ParamsError: one sentence naming the file and the first mismatch.
    """
    where = f"rvq.codebooks_file = {str(path)!r}"
    if not Path(path).is_file():
        raise ParamsError(f"{where} does not exist")
    try:
        codebooks, meta = load_codebooks(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise ParamsError(f"{where} is not a codebook file written by the codebooks stage ({' '.join(str(err).split())})") from None
    if not meta.get("fit") or codebooks.ndim != 3:
        raise ParamsError(f"{where} holds no fitted codebooks ({meta.get('reason', 'its encoder type has none')})")
    if "encoder" not in meta:
        raise ParamsError(f"{where} carries no encoder fingerprint (written before codebook files recorded one), so it cannot be checked: refit it")
    problem = _mismatch(meta["encoder"], fingerprint)
    if problem:
        raise ParamsError(f"{where} does not fit this run: {problem}")
    n_layers, size = codebooks.shape[:2]
    if size != codebook_size:
        raise ParamsError(f"{where} has {size} centroids per layer but rvq.codebook_size = {codebook_size}: set rvq.codebook_size = {size}")
    if n_layers < max_layers:
        raise ParamsError(f"{where} has {n_layers} layers but rvq.max_layers = {max_layers}: set rvq.max_layers (and rvq.layers) <= {n_layers}")
    # greedy fit: the first max_layers layers are the max_layers-layer fit (module docstring)
    return codebooks[:max_layers], meta


def codebook_summary(target: np.ndarray, codebooks: np.ndarray, fit_sample: np.ndarray | None = None) -> dict[str, Any]:
    """``metrics/rvq.json``'s measurements: ``relative_error`` and per-layer ``layers``
    (:func:`quantisation_report`) on ``target`` ``[M, D]`` (a seeded sample of the training
    split's frames: the same frames whichever codebooks are used, so runs compare directly), and,
    when the codebooks were fitted on other frames ``fit_sample`` ``[M', D]`` (another corpus),
    the same on those under ``fit_sample``: how much worse the training split fares than the
    frames the codebooks were fitted on.
    """
    report = quantisation_report(target, codebooks)
    out: dict[str, Any] = {"target_frames": len(target), "relative_error": report[-1]["relative_error"], "layers": report}
    if fit_sample is not None:
        own = quantisation_report(fit_sample, codebooks)
        out["fit_sample"] = {"frames": len(fit_sample), "relative_error": own[-1]["relative_error"], "layers": own}
    return out
