"""The benchmark suite's own correctness: its line format, and that its baselines compute what
they claim (same init as FAISS, a Lloyd objective that never rises, the old encode loop)."""

import numpy as np
import pytest
import torch

from bench.bench_rvq import faiss_init, lloyd_numpy
from bench.bench_tokenize import _layerwise
from bench.common import line, parse_line
from clapart_core.tokens.rvq import ResidualVQ, import_faiss


def test_line_format_round_trips():
    text = line("tokenize_encode", 9246.4, "frames/s", "0.73x GEMM bound: 233 of 319 GFLOP/s")
    assert text == "tokenize_encode: 9246 frames/s (0.73x GEMM bound: 233 of 319 GFLOP/s)"
    parsed = parse_line(text)
    assert parsed["name"] == "tokenize_encode" and parsed["value"] == 9246 and parsed["unit"] == "frames/s"
    assert parsed["note"].startswith("0.73x")
    assert parse_line(line("dvc_repro_noop", 1.118, "s"))["note"] == ""
    assert parse_line("x: 1.5e-05 s (tiny)")["value"] == 1.5e-05
    with pytest.raises(ValueError):
        parse_line("# a comment line")


def test_lloyd_baseline_starts_where_faiss_starts_and_never_gets_worse():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    faiss = import_faiss()
    km = faiss.Kmeans(8, 16, niter=0, seed=5, max_points_per_centroid=1000)
    km.train(x)
    np.testing.assert_array_equal(faiss_init(x, 16, 5), km.centroids)
    _, objective = lloyd_numpy(x, faiss_init(x, 16, 5), 8)
    assert all(b <= a * (1 + 1e-6) for a, b in zip(objective[:-1], objective[1:], strict=True))
    assert objective[-1] < objective[0]


def test_chunked_encode_equals_the_layerwise_loop_including_ties():
    rng = np.random.default_rng(1)
    cb = rng.standard_normal((3, 32, 8)).astype(np.float32)
    cb[:, 20] = cb[:, 3]  # duplicate centroids: ties must go to the lower index, 3
    x = torch.from_numpy(np.concatenate([rng.standard_normal((500, 8)), cb[0, [3, 20]]]).astype(np.float32))
    rvq = ResidualVQ(cb)
    rvq.chunk = 64  # several chunks, last one partial
    codes = rvq.encode(x)
    assert torch.equal(codes, _layerwise(rvq, x))
    assert codes[-1, 0] == codes[-2, 0] == 3
