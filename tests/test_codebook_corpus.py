"""Codebooks from another corpus (issue 15 item 1): the codebooks stage fitted on the codebook
corpus's features tokenises the training corpus and the tokens feed training; a codebook file
fitted elsewhere is used only when its encoder fingerprint matches, else refused in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from clapart_core.captioner.data import build_batch, load_examples
from clapart_core.captioner.model import ClapArtConfig, ClapArtForCaptioning, small_bart_config
from clapart_core.encoders.extract import sample_frames
from clapart_core.pipeline.errors import ParamsError
from clapart_core.pipeline.params import Workspace, codebook_corpus_params
from clapart_core.pipeline.storage import SPLITS, RaggedWriter, read_tokens
from clapart_core.tokens.rvq import (
    KMeansConfig,
    ResidualVQ,
    check_codebooks_file,
    features_fingerprint,
    fit_residual_codebooks,
    load_codebooks,
    quantisation_report,
    save_codebooks,
)
from stages import codebooks as codebooks_stage
from stages import tokenize as tokenize_stage

pytestmark = pytest.mark.usefixtures("one_thread")

D, K, LAYERS = 8, 16, 3
ATTRS = {"encoder": "beats", "spec": json.dumps({"checkpoint": None, "random": {"encoder_layers": 2}, "seed": 1, "layer": None}),
         "pretrained": False, "weights_sha256": "a" * 64}


def _write_features(folder: Path, shift: float, seed: int, attrs: dict = ATTRS, n_clips: int = 12) -> None:
    """``{split}.h5`` of ``n_clips`` clips of 40 frames ``[40, D]`` per split: a corpus whose frames
    cluster around ``shift`` (two corpora with other shifts: other feature distributions)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with RaggedWriter(folder / f"{split}.h5", (D,), np.float16, attrs=attrs) as w:
            for i in range(n_clips):
                centre = rng.normal(shift, 1.0, size=D)
                w.append(f"{split}{i}", (centre + 0.3 * rng.normal(size=(40, D))).astype(np.float16))


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corpus: dict | None, file: dict | None = None) -> None:
    """A project folder with the configure stage's codebooks/tokenize settings and corpus B's
    training features (data/features/encoder); corpus A's (data/codebook_corpus) when ``corpus``."""
    monkeypatch.chdir(tmp_path)
    config = Path("data/config")
    config.mkdir(parents=True)
    kmeans = {"niter": 5, "max_samples": 100000, "seed": 3, "gpu": False}
    settings = {"fit": True, "max_layers": LAYERS, "codebook_size": K, "kmeans": kmeans, "codebooks_file": file, "corpus": corpus}
    (config / "codebooks.json").write_text(json.dumps(settings))
    (config / "tokenize.json").write_text(json.dumps({"type": "beats_rvq", "layers": LAYERS}))
    _write_features(Path("data/features/encoder"), shift=0.0, seed=1)  # corpus B: the target


def test_codebooks_fitted_on_corpus_a_tokenise_corpus_b_and_the_tokens_feed_training(tmp_path, monkeypatch):
    _project(tmp_path, monkeypatch, corpus={"source": "folder", "root": "/corpora/a"})
    cb_features = Workspace(codebook_corpus=True).encoder_features
    _write_features(cb_features, shift=3.0, seed=2)  # corpus A: another distribution
    codebooks_stage.main({}, Workspace())

    # the codebooks are corpus A's fit (computed here independently), not corpus B's
    a_sample = sample_frames([cb_features / f"{s}.h5" for s in SPLITS], 100000, 3)
    expected = fit_residual_codebooks(a_sample, LAYERS, K, KMeansConfig(niter=5, seed=3))
    codebooks, meta = load_codebooks("data/codebooks/rvq.npz")
    np.testing.assert_array_equal(codebooks, expected)
    assert meta["corpus"] == "codebook_corpus folder:/corpora/a" and meta["encoder"] == features_fingerprint("data/features/encoder/train.h5")

    # metrics/rvq.json: the error on B's training frames (the target) and on A's own frames
    report = json.loads(Path("metrics/rvq.json").read_text())
    target = sample_frames([Path("data/features/encoder/train.h5")], 100000, 3)
    assert report["codebooks"] == {"source": "fitted", "fitted_on": "codebook_corpus folder:/corpora/a"}
    assert report["target_frames"] == len(target) == 12 * 40 and report["fit_sample"]["frames"] == len(a_sample) == 3 * 12 * 40
    assert report["relative_error"] == pytest.approx(quantisation_report(target, expected)[-1]["relative_error"])
    assert report["fit_sample"]["relative_error"] == pytest.approx(quantisation_report(a_sample, expected)[-1]["relative_error"])
    assert [layer["layer"] for layer in report["layers"]] == [1, 2, 3] and all(0 < layer["used"] <= 1 for layer in report["layers"])
    # fitted on other frames, the codebooks fit B's worse than A's own
    assert report["relative_error"] > report["fit_sample"]["relative_error"]

    # tokenize: corpus B's frames through corpus A's codebooks
    tokenize_stage.main({"extract": {"num_processes": 1}}, Workspace())
    tokens = read_tokens("data/tokens/train.parquet")
    rvq = ResidualVQ(expected)
    from clapart_core.encoders.extract import iter_features

    for (clip_id, feats), cid, codes in zip(iter_features(Path("data/features/encoder/train.h5")), tokens.clip_ids, tokens.codes, strict=True):
        assert clip_id == cid
        np.testing.assert_array_equal(np.asarray(codes), rvq.encode(feats).numpy())

    # the tokens feed training: examples -> batch -> a BART step with a finite loss that moves
    manifest = pa.table({"clip_id": list(tokens.clip_ids), "captions": [["a dog barks"]] * len(tokens.clip_ids)})
    examples = load_examples(Path("data/tokens/train.parquet"), manifest, None)
    batch = build_batch(examples[:4], max_frames=32, use_clap=False, crop_generator=torch.Generator().manual_seed(0),
                        caption_ids=[[0, 5, 6, 2]] * 4)
    torch.manual_seed(0)
    model = ClapArtForCaptioning(ClapArtConfig(bart=small_bart_config(16, 32, 1, 1, 2, 64, dropout=0.0, max_frames=32),
                                               num_codebooks=LAYERS, codebook_size=K, clap_dim=8, use_clap=False, max_frames=32))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(batch.codes, batch.frame_mask, labels=batch.labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_a_codebook_file_from_elsewhere_is_used_and_measured_on_the_target(tmp_path, monkeypatch):
    """rvq.codebooks_file: the file's codebooks (its first max_layers layers) become data/codebooks/rvq.npz,
    measured on the same training frames as a fit here would be."""
    published = tmp_path / "published.npz"
    _project(tmp_path, monkeypatch, corpus=None, file={"path": str(published), "sha256": "f" * 64})
    rng = np.random.default_rng(5)
    elsewhere = rng.normal(size=(5, K, D)).astype(np.float32)  # 5 layers: more than max_layers
    save_codebooks(published, elsewhere, fit=True, encoder=features_fingerprint("data/features/encoder/train.h5"), corpus="training split")
    codebooks_stage.main({}, Workspace())
    codebooks, meta = load_codebooks("data/codebooks/rvq.npz")
    np.testing.assert_array_equal(codebooks, elsewhere[:LAYERS])
    assert meta["codebooks_file"] == str(published)
    report = json.loads(Path("metrics/rvq.json").read_text())
    target = sample_frames([Path("data/features/encoder/train.h5")], 100000, 3)
    assert report["codebooks"]["source"] == "file" and "fit_sample" not in report
    assert report["relative_error"] == pytest.approx(quantisation_report(target, elsewhere[:LAYERS])[-1]["relative_error"])


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"dim": 4}, "its codebooks are 4-dimensional but this run's features are 8-dimensional"),
        ({"weights_sha256": "b" * 64}, "its encoder weights (sha256 bbbbbbbbbbbb) are not this run's (aaaaaaaaaaaa)"),
        ({"spec": {"checkpoint": None, "random": {"encoder_layers": 2}, "seed": 1, "layer": 1}}, "its encoder's layer is 1, this run's is null"),
        ({"encoder": "hubert"}, "it was fitted on hubert features, this run encodes with beats"),
        ({"pretrained": True}, "it was fitted on a pretrained encoder's features, this run's encoder is random"),
    ],
)
def test_a_mismatched_codebook_file_is_refused_in_one_sentence(tmp_path, change, says):
    _write_features(tmp_path / "f", shift=0.0, seed=1, n_clips=1)
    ours = features_fingerprint(tmp_path / "f/train.h5")
    assert ours["dim"] == D and ours["spec"]["layer"] is None
    save_codebooks(tmp_path / "rvq.npz", np.zeros((4, K, D), np.float32), fit=True, encoder={**ours, **change})
    with pytest.raises(ParamsError) as err:
        check_codebooks_file(tmp_path / "rvq.npz", ours, K, LAYERS)
    message = str(err.value)
    assert message == f"rvq.codebooks_file = {str(tmp_path / 'rvq.npz')!r} does not fit this run: {says}" and "\n" not in message


def test_codebook_file_shape_and_provenance_are_checked(tmp_path):
    _write_features(tmp_path / "f", shift=0.0, seed=1, n_clips=1)
    ours = features_fingerprint(tmp_path / "f/train.h5")
    path = tmp_path / "rvq.npz"
    save_codebooks(path, np.zeros((2, K, D), np.float32), fit=True, encoder=ours)
    with pytest.raises(ParamsError, match=r"has 2 layers but rvq.max_layers = 3: set rvq.max_layers \(and rvq.layers\) <= 2"):
        check_codebooks_file(path, ours, K, LAYERS)
    with pytest.raises(ParamsError, match="has 16 centroids per layer but rvq.codebook_size = 32"):
        check_codebooks_file(path, ours, 32, 2)
    save_codebooks(path, np.zeros((4, K, D), np.float32), fit=True)  # written before files carried a fingerprint
    with pytest.raises(ParamsError, match="carries no encoder fingerprint"):
        check_codebooks_file(path, ours, K, LAYERS)
    with pytest.raises(ParamsError, match="does not exist"):
        check_codebooks_file(tmp_path / "nope.npz", ours, K, LAYERS)
    # the same weights under another checkpoint path (a published file used on another machine) fit
    moved = {**ours, "spec": {**ours["spec"], "checkpoint": "/elsewhere/BEATs.pt"}}
    save_codebooks(path, np.ones((4, K, D), np.float32), fit=True, encoder=moved)
    assert check_codebooks_file(path, ours, K, LAYERS)[0].shape == (LAYERS, K, D)


def test_codebook_corpus_overlays_data_only_when_set():
    params = {"data": {"source": "demo", "root": "data/corpus/demo", "strict": False, "demo": {"n_clips": 400}},
              "codebook_corpus": {"source": None, "root": None}}
    assert codebook_corpus_params(params) is None
    params["codebook_corpus"] = {"source": "folder", "root": "/corpora/a", "strict": True}
    data = codebook_corpus_params(params)["data"]
    assert data == {"source": "folder", "root": "/corpora/a", "strict": True, "demo": {"n_clips": 400}}
    assert Workspace(codebook_corpus=True).encoder_features == Path("data/codebook_corpus/features/encoder")
