"""Caption reranking (issue 15, item 3): ``generate.rerank``, ``clapart caption --rerank``.

The chosen caption is, for each clip, the candidate that maximises the stated score, recomputed
here independently (a per-token loop over the model's logits, each caption's CLAP text embedding
alone); seeded nucleus sampling is deterministic and leaves the caller's RNG alone; the candidates
file holds every candidate with scores that reproduce the choice; bad settings are one sentence.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from caption_model import CLAP_SPEC, PITCHES, build_model_dir, write_tone
from typer.testing import CliRunner

from clapart_core.captioner.inference import CaptionPipeline, CaptionRecord
from clapart_core.captioner.rerank import (
    CANDIDATE_COLUMNS,
    RerankSettings,
    candidate_ids,
    choose,
    rerank_examples,
    rerank_scores,
    write_candidates,
)
from clapart_core.cli import app
from clapart_core.encoders.clap import ByteTextTokenizer, ClapMismatchError, clap_from_spec, clap_of_embeddings
from clapart_core.pipeline.errors import ParamsError
from clapart_core.pipeline.storage import RaggedWriter

pytestmark = pytest.mark.usefixtures("one_thread")

HYBRID = RerankSettings("hybrid", candidates=6, sampling="nucleus", temperature=1.5, top_p=0.98, weight=0.3, seed=7)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rerank_model")
    build_model_dir(root)
    return root


@pytest.fixture(scope="module")
def pipe(root: Path) -> CaptionPipeline:
    return CaptionPipeline.from_model_dir(root / "model", device="cpu")


@pytest.fixture(scope="module")
def examples(pipe: CaptionPipeline, tmp_path_factory: pytest.TempPathFactory) -> list:
    folder = tmp_path_factory.mktemp("tones")
    out = []
    for freq in list(PITCHES)[:3]:
        path = write_tone(folder / f"{int(freq)}.wav", freq, 1.0)
        out.append(pipe._example(path, 0.0, 1.0, CaptionRecord(str(path))))
    return out


def _independent_loglik(model, example, ids: torch.Tensor) -> list[float]:
    """Mean log-probability per token after the decoder start, to the first </s>: a plain loop."""
    from clapart_core.captioner.data import build_batch

    batch = build_batch([example], max_frames=model.config.max_frames, use_clap=model.config.use_clap, crop_generator=None)
    eos = model.bart.config.eos_token_id
    out = []
    with torch.no_grad():
        for row in ids:
            logits = model(batch.codes, batch.frame_mask, batch.clap, decoder_input_ids=row[None, :-1]).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            total, n = 0.0, 0
            for t in range(1, len(row)):
                total += float(logp[t - 1, row[t]])
                n += 1
                if int(row[t]) == eos:
                    break
            out.append(total / n)
    return out


def test_rerank_scores_are_the_stated_formulas() -> None:
    loglik, cosine = np.array([-1.0, -0.5, -2.0]), np.array([0.1, -0.2, 0.4])
    assert np.allclose(rerank_scores(loglik, cosine, "clap", 0.3), cosine)
    assert np.allclose(rerank_scores(loglik, cosine, "hybrid", 0.3), [0.3 * -1.0 + 0.7 * 0.1, 0.3 * -0.5 + 0.7 * -0.2, 0.3 * -2.0 + 0.7 * 0.4])
    assert choose(np.array([0.2, 0.5, 0.5])) == 1  # the first of a tie
    with pytest.raises(ValueError, match="plain beam search"):
        rerank_scores(loglik, cosine, "none", 0.3)


@pytest.mark.parametrize("settings", [HYBRID, RerankSettings("clap", candidates=5, sampling="beam", seed=0)], ids=["hybrid-nucleus", "clap-beam"])
def test_the_reranker_returns_the_candidate_that_maximises_the_stated_score(pipe: CaptionPipeline, examples: list, settings: RerankSettings) -> None:
    clips = rerank_examples(
        pipe.model, pipe.tokenizer, examples, settings, audio_embeddings=[ex.clap for ex in examples], embed_text=pipe.clap.embed_text, progress=False
    )
    distinct = 0
    for example, clip in zip(examples, clips, strict=True):
        ids = candidate_ids(pipe.model, example, settings)
        assert ids.shape[0] == settings.candidates == len(clip.texts)
        assert [t.strip() for t in pipe.tokenizer.batch_decode(ids, skip_special_tokens=True)] == clip.texts
        loglik = _independent_loglik(pipe.model, example, ids)
        cosine = [float(pipe.clap.embed_text([t])[0] @ example.clap) for t in clip.texts]  # each caption alone: no padding
        stated = [c if settings.mode == "clap" else settings.weight * ll + (1 - settings.weight) * c for ll, c in zip(loglik, cosine, strict=True)]
        assert np.allclose(clip.loglik, loglik, atol=1e-5) and np.allclose(clip.clap_cosine, cosine, atol=1e-5)
        best = max(range(len(stated)), key=lambda j: (stated[j], -j))
        assert stated[best] - sorted(stated)[-2] > 1e-6 or clip.texts[best] == clip.texts[clip.chosen]  # a near-tie between different texts would be flaky
        assert clip.chosen == best and clip.caption == clip.texts[best]
        assert all(ll <= 0 for ll in loglik)
        distinct += len(set(clip.texts)) > 1
    assert distinct > 0, "every clip's candidates are identical: the test would not tell a ranking from a constant"


def test_seeded_nucleus_sampling_is_deterministic_and_leaves_the_callers_rng_alone(pipe: CaptionPipeline, examples: list) -> None:
    kw = dict(audio_embeddings=[ex.clap for ex in examples], embed_text=pipe.clap.embed_text, progress=False)
    torch.manual_seed(123)
    first = rerank_examples(pipe.model, pipe.tokenizer, examples, HYBRID, **kw)
    after = torch.rand(3)
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    assert torch.equal(after, expected_after)
    again = rerank_examples(pipe.model, pipe.tokenizer, examples, HYBRID, **kw)
    assert [c.texts for c in first] == [c.texts for c in again]
    assert all(np.array_equal(a.score, b.score) for a, b in zip(first, again, strict=True))
    # a clip's candidates do not depend on the other clips
    alone = rerank_examples(pipe.model, pipe.tokenizer, examples[2:], HYBRID, **{**kw, "audio_embeddings": [examples[2].clap]})
    assert alone[0].texts == first[2].texts
    other = rerank_examples(pipe.model, pipe.tokenizer, examples, RerankSettings(**{**HYBRID.__dict__, "seed": 8}), **kw)
    assert [c.texts for c in other] != [c.texts for c in first]


def test_the_candidates_file_holds_every_candidate_and_reproduces_the_choice(pipe: CaptionPipeline, examples: list, tmp_path: Path) -> None:
    embeds = [ex.clap for ex in examples]
    clips = rerank_examples(pipe.model, pipe.tokenizer, examples, HYBRID, audio_embeddings=embeds, embed_text=pipe.clap.embed_text, progress=False)
    names = ["a.wav", "b.wav", "c.wav"]
    write_candidates(tmp_path / "test_candidates.csv", names, clips)
    with (tmp_path / "test_candidates.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CANDIDATE_COLUMNS
    assert len(rows) == HYBRID.candidates * len(names)
    for name, clip in zip(names, clips, strict=True):
        mine = [r for r in rows if r["file_name"] == name]
        assert [r["caption"] for r in mine] == clip.texts
        for r in mine:
            assert abs(float(r["score"]) - (0.3 * float(r["loglik"]) + 0.7 * float(r["clap_cosine"]))) < 1e-5
        best = max(mine, key=lambda r: float(r["score"]))
        assert [r["selected"] for r in mine].count("1") == 1 and best["selected"] == "1" and best["caption"] == clip.caption


def test_the_clap_of_an_embeddings_file_is_rebuilt_and_checked(root: Path, tmp_path: Path) -> None:
    encoder = clap_of_embeddings(root / "clap_train.h5")
    assert isinstance(encoder.text_tokenizer(), ByteTextTokenizer) and encoder.embed_text(["a beep", "a hum"]).shape == (2, 16)
    wrong = tmp_path / "wrong.h5"
    sha = "0" * 64
    with RaggedWriter(wrong, (16,), np.float32, attrs={"spec": json.dumps(CLAP_SPEC), "pretrained": False, "weights_sha256": sha}) as w:
        w.append("x", np.zeros((1, 16), np.float32))
    with pytest.raises(ClapMismatchError, match="is not the one that wrote it"):
        clap_of_embeddings(wrong)


def test_the_byte_tokenizer_refuses_a_text_tower_too_small_for_it() -> None:
    with pytest.raises(ValueError, match="vocab_size 200 is below 259"):
        clap_from_spec({**CLAP_SPEC, "random": {"projection_dim": 16, "text": {"vocab_size": 200}}}).embed_text(["a beep"])


def _caption(model: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner(env={"HF_HUB_OFFLINE": "1"}).invoke(app, ["caption", *args, "--model", str(model), "--device", "cpu"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_clapart_caption_rerank_keeps_the_candidates_and_picks_the_best(root: Path, tmp_path: Path) -> None:
    tone = write_tone(tmp_path / "beep.wav", 440.0, 1.0)
    code, out, err = _caption(root / "model", str(tone), "--rerank", "hybrid", "--candidates", "4", "--temperature", "1.5", "--format", "jsonl")
    assert code == 0, err
    record = json.loads(out)
    scores = [c["score"] for c in record["candidates"]]
    assert len(scores) == 4 and record["selected"] == int(np.argmax(scores))
    assert record["caption"] == record["candidates"][record["selected"]]["caption"]
    for c in record["candidates"]:
        assert c["score"] == pytest.approx(0.3 * c["loglik"] + 0.7 * c["clap_cosine"], abs=1e-9)
    # the default stays the paper's beam search, with no candidates
    code, out, _ = _caption(root / "model", str(tone), "--format", "jsonl")
    assert code == 0 and "candidates" not in json.loads(out)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--rerank", "best"], "error: --rerank options: rerank must be one of none, clap, hybrid, got 'best'"),
        (["--rerank", "clap", "--candidates", "1"], "error: --rerank options: reranking needs at least 2 candidates per clip, got 1"),
        (["--rerank", "hybrid", "--sampling", "greedy"], "error: --rerank options: sampling must be one of beam, nucleus, got 'greedy'"),
    ],
)
def test_bad_rerank_options_are_one_line(root: Path, tmp_path: Path, args: list[str], line: str) -> None:
    code, out, err = _caption(root / "model", str(write_tone(tmp_path / "t.wav", 440.0, 0.5)), *args)
    assert code == 2 and out == "" and err.splitlines() == [line]


def test_rerank_by_clap_with_a_model_without_clap_is_one_line_before_loading(root: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    front = json.loads((model / "frontend.json").read_text())
    (model / "frontend.json").write_text(json.dumps({**front, "clap": None}))
    code, out, err = _caption(model, str(write_tone(tmp_path / "t.wav", 440.0, 0.5)), "--rerank", "clap")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"error: --rerank clap needs a CLAP model, and {model} has none (it was trained with model.use_clap false); use --rerank none"]


def test_params_refuse_reranking_one_candidate() -> None:
    from conftest import tiny_project_params

    from clapart_core.pipeline.schema import validate_params

    params = tiny_project_params({"generate": {"rerank": "hybrid", "candidates": 1}})
    with pytest.raises(ParamsError, match=r"generate\.candidates .*must be at least 2 to rerank \(generate\.rerank = hybrid\)"):
        validate_params(params)
