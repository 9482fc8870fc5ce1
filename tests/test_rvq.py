"""Residual VQ: the greedy truncation property the pipeline's DVC graph relies on, and encoding."""

import numpy as np
import pytest
import torch

from clapart_core.tokens.rvq import KMeansConfig, ResidualVQ, fit_residual_codebooks, nearest, quantisation_report


@pytest.fixture(scope="module")
def feats() -> np.ndarray:
    rng = np.random.default_rng(0)
    # clustered data so that k-means has structure to find
    centers = rng.standard_normal((16, 24)).astype(np.float32) * 3
    return (centers[rng.integers(0, 16, 4000)] + rng.standard_normal((4000, 24)).astype(np.float32)).astype(np.float32)


def test_first_k_layers_of_deep_fit_equal_shallow_fit(feats):
    deep = fit_residual_codebooks(feats, 4, 32, KMeansConfig(niter=8, seed=7))
    shallow = fit_residual_codebooks(feats, 2, 32, KMeansConfig(niter=8, seed=7))
    assert deep.shape == (4, 32, 24) and deep.dtype == np.float32
    np.testing.assert_array_equal(deep[:2], shallow)


def test_fit_is_deterministic_and_seed_matters(feats):
    a = fit_residual_codebooks(feats, 2, 16, KMeansConfig(niter=5, seed=1))
    b = fit_residual_codebooks(feats, 2, 16, KMeansConfig(niter=5, seed=1))
    c = fit_residual_codebooks(feats, 2, 16, KMeansConfig(niter=5, seed=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_truncated_encoding_is_prefix_and_error_decreases(feats):
    cb = fit_residual_codebooks(feats, 3, 32, KMeansConfig(niter=8, seed=3))
    full = ResidualVQ(cb).encode(feats)
    assert full.shape == (4000, 3)
    torch.testing.assert_close(ResidualVQ(cb, num_layers=2).encode(feats), full[:, :2])
    report = quantisation_report(feats, cb)
    errors = [r["relative_error"] for r in report]
    assert errors[0] < 0.5  # 32 centroids capture 16 well-separated clusters
    assert errors[0] > errors[1] > errors[2]
    # decode(encode(x)) reproduces the residual error the report states
    recon = ResidualVQ(cb).decode(full)
    direct = float(((torch.from_numpy(feats) - recon).double() ** 2).sum() / (feats.astype(np.float64) ** 2).sum())
    assert direct == pytest.approx(errors[2], rel=1e-5)


def test_nearest_matches_brute_force_and_shapes():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((300, 8)).astype(np.float32))
    c = torch.from_numpy(rng.standard_normal((50, 8)).astype(np.float32))
    brute = torch.cdist(x.double(), c.double()).argmin(dim=1)
    assert torch.equal(nearest(x, c, chunk=64), brute)
    rvq = ResidualVQ(rng.standard_normal((2, 50, 8)).astype(np.float32))
    assert rvq.encode(x.reshape(3, 100, 8)).shape == (3, 100, 2)


def test_bad_requests_are_clear():
    with pytest.raises(ValueError, match="holds 2 layers"):
        ResidualVQ(np.zeros((2, 4, 3), np.float32), num_layers=3)
    with pytest.raises(ValueError, match="cannot fit 64 centroids on 10"):
        fit_residual_codebooks(np.zeros((10, 3), np.float32), 1, 64)


def test_codebook_file_is_byte_stable(tmp_path):
    from clapart_core.tokens.rvq import load_codebooks, save_codebooks

    cb = np.random.default_rng(0).standard_normal((3, 8, 4)).astype(np.float32)
    save_codebooks(tmp_path / "a.npz", cb, seed=1, sample_size=100)
    save_codebooks(tmp_path / "b.npz", cb, seed=1, sample_size=100)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    got, meta = load_codebooks(tmp_path / "a.npz")
    np.testing.assert_array_equal(got, cb)
    assert meta == {"seed": 1, "sample_size": 100}


def test_kmeans_gpu_setting():
    """rvq.kmeans.gpu: false is the CPU, auto is every GPU FAISS sees, true without one is one sentence."""
    from clapart_core.pipeline.errors import ParamsError
    from clapart_core.tokens.rvq import import_faiss, kmeans_gpus

    faiss = import_faiss()
    visible = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    assert kmeans_gpus(False) == 0
    assert kmeans_gpus("auto") == visible
    if visible:  # a GPU machine with faiss-gpu: true uses them all
        assert kmeans_gpus(True) == visible
    else:
        with pytest.raises(ParamsError, match=r"^rvq\.kmeans\.gpu is true but (the installed FAISS .* has no GPU support|FAISS sees no GPU)") as err:
            kmeans_gpus(True)
        assert "\n" not in str(err.value)
