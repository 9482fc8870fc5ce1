"""End to end: the DVC pipeline on a tiny demo corpus, in a temporary git + DVC project.

Checks what a researcher relies on: `dvc repro` produces every artifact and a complete
metrics/scores.json; a second `dvc repro` reruns nothing; `dvc exp run -S rvq.layers=2` reruns
exactly tokenize -> train -> score; `dvc metrics diff` then shows both runs' scores; and
`dvc exp run -S model.use_clap=false` works.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_project_params

ROOT = Path(__file__).resolve().parents[1]




def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out[-4000:]}"
    return out


def _run_stdout(args: list[str], cwd: Path) -> str:
    """stdout alone (stderr carries notes and timings)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc.stdout


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w@.-]+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("proj")
    for name in ("clapart_core", "stages"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, proj / name)
    (proj / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    params = tiny_project_params()
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], proj)
    _run(["git", "add", "-A"], proj)
    _run(["git", "commit", "-qm", "tiny project"], proj)
    return proj


@pytest.mark.slow
def test_pipeline_repro_noop_and_ablation(project: Path):
    out = _run(["dvc", "repro"], project)
    stages = ["corpus", "configure", "decode", "features", "clap", "codebooks", "tokenize", "train", "score"]
    assert sorted(_ran(out)) == sorted(stages + ["cb_corpus", "cb_decode", "cb_features"])
    # no codebook_corpus: its chain writes markers only, and the codebooks are fitted on the training split
    assert sorted(p.name for p in (project / "data/codebook_corpus").rglob("*") if p.is_file()) == ["unused.txt"] * 3
    assert json.loads((project / "metrics/rvq.json").read_text())["codebooks"]["fitted_on"] == "training split"
    scores = json.loads((project / "metrics/scores.json").read_text())
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider"}
    assert all(v is None or isinstance(v, float) for v in scores.values()), "the DVC metric holds numbers only"
    assert 0.0 <= scores["cider_d"] and 0.0 <= scores["bleu_1"] <= 1.0
    notes = json.loads((project / "metrics/scores_notes.json").read_text())
    assert notes["encoder_pretrained"] is False and notes["n_clips"] > 0 and "baseline_cider_d" in notes
    assert notes["unavailable"]["spice"] and not any(
        path.startswith("/") for text in notes["unavailable"].values() for path in text.split()
    ), "no machine path in the committed notes"
    shown = _run(["dvc", "metrics", "show"], project)
    assert max(len(line) for line in shown.splitlines()) <= 100, shown
    assert (project / "data/predictions/test.csv").read_text().startswith("file_name,caption_predicted")
    assert (project / "dvclive/plots/metrics/train/loss.tsv").is_file()
    # selection: the val split scored after each epoch (SPICE is missing here: selected by CIDEr-D, said so)
    assert (project / "dvclive/plots/metrics/val/cider_d.tsv").read_text().startswith("step\tcider_d")
    summary = json.loads((project / "data/model/training_summary.json").read_text())
    assert (summary["select_by"], summary["selected_by"], summary["best_epoch"]) == ("spider", "cider_d", 1) and summary["select_note"]
    assert summary["kept_epochs"] == [1] and (project / "data/model/epochs/epoch_1/frontend.json").is_file()
    kept = json.loads((project / "metrics/scores_epochs.json").read_text())
    assert kept["selected_epoch"] == 1 and kept["epochs"][0]["test"]["cider_d"] == scores["cider_d"]
    assert notes["epoch"] == 1 and notes["selected_by"] == "cider_d"
    rvq = json.loads((project / "metrics/rvq.json").read_text())
    assert len(rvq["layers"]) == 4
    decode = json.loads((project / "metrics/decode.json").read_text())
    assert decode["on_error"] == "fail" and decode["n_skipped"] == 0 and decode["n_decoded"] == decode["n_clips"] > 0
    # a user's own file: stereo 44.1 kHz float, captioned through the model directory's front end
    import numpy as np
    import soundfile as sf

    wav = next((project / "data/corpus/demo/audio/test").glob("*.wav"))
    mono, sr = sf.read(wav, dtype="float32")
    from clapart_core.corpus.audio import resample

    stereo = np.stack([resample(mono, sr, 44100)] * 2, axis=1)
    sf.write(project / "mine.flac", stereo, 44100)
    options = ["--model", "data/model", "--device", "cpu", "--num-beams", "2", "--max-length", "20", "--format", "jsonl"]
    cap = _run([sys.executable, "-m", "clapart_core.cli", "caption", str(wav), "mine.flac", *options], project)
    records = [json.loads(line) for line in cap.splitlines() if line.startswith("{")]
    assert len(records) == 2 and all(r["caption"] and r["error"] is None for r in records)
    # the pipeline's own caption of that test clip is reproduced from the raw file; predictions name
    # it by its file_name as the corpus CSV writes it
    with (project / "data/predictions/test.csv").open(newline="") as f:
        predicted = {row["file_name"]: row["caption_predicted"] for row in csv.DictReader(f)}
    assert records[0]["caption"] == predicted[wav.relative_to(project / "data/corpus/demo").as_posix()]
    # and evaluate against the corpus's own test CSV gives exactly the score stage's numbers
    evaluated = _run_stdout(
        [sys.executable, "-m", "clapart_core.cli", "evaluate", "--format", "json",
         "--predictions", "data/predictions/test.csv", "--references", "data/corpus/demo/test.csv"],
        project,
    )
    assert json.loads(evaluated) == json.loads((project / "metrics/scores.json").read_text())

    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "baseline run"], project)

    # nothing changed -> nothing reruns
    again = _run(["dvc", "repro"], project)
    assert _ran(again) == []

    # the RVQ-depth ablation reruns exactly tokenize -> train -> score (plus the sub-second
    # configure stage, which resolves which keys apply to encoder.type)
    exp = _run(["dvc", "exp", "run", "-S", "rvq.layers=2"], project)
    assert _ran(exp) == ["configure", "tokenize", "train", "score"]
    diff = _run(["dvc", "metrics", "diff", "--json"], project)
    changed = json.loads(diff)
    assert "metrics/scores.json" in changed and "cider_d" in changed["metrics/scores.json"]
    # the experiment's tokens really have 2 codebooks
    from clapart_core.pipeline.storage import read_tokens

    assert read_tokens(project / "data/tokens/test.parquet").num_codebooks == 2

    # the CLAP ablation (paper Table 2) reruns only train -> score
    noclap = _run(["dvc", "exp", "run", "-S", "rvq.layers=4", "-S", "model.use_clap=false"], project)
    assert set(_ran(noclap)) <= {"configure", "tokenize", "train", "score"} and "train" in _ran(noclap)
    show = json.loads(_run(["dvc", "exp", "show", "--json"], project))
    assert show, "dvc exp show lists the experiments"


def _caption_reproduces_prediction(project: Path) -> None:
    """`clapart caption` on a test clip's raw file, with the front end rebuilt from data/model
    (registry entry of the model's token type, its recorded spec and fingerprint), gives the
    caption the score stage predicted for that clip."""
    wav = sorted((project / "data/corpus/demo/audio/test").glob("*.wav"))[0]
    options = ["--model", "data/model", "--device", "cpu", "--num-beams", "2", "--max-length", "20", "--format", "jsonl"]
    out = _run_stdout([sys.executable, "-m", "clapart_core.cli", "caption", str(wav), *options], project)
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    with (project / "data/predictions/test.csv").open(newline="") as f:
        predicted = {row["file_name"]: row["caption_predicted"] for row in csv.DictReader(f)}
    file_name = wav.relative_to(project / "data/corpus/demo").as_posix()  # the corpus CSV's id, as the score stage writes it
    assert len(records) == 1 and records[0]["caption"] == predicted[file_name]


@pytest.mark.slow
def test_discrete_token_types_ignore_rvq_params(project: Path):
    """encodec / beats_tokenizer / speechtokenizer runs complete, and rvq.* changes rerun nothing under them."""
    codebooks = {"encodec": 16, "beats_tokenizer": 1, "speechtokenizer": 8}
    for etype, layers in (("encodec", 3), ("beats_tokenizer", 1), ("speechtokenizer", 2)):
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["encoder"]["type"] = etype
        params["model"]["use_clap"] = True
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = _run(["dvc", "repro"], project)
        assert {"features", "tokenize", "train", "score"} <= set(_ran(out))
        from clapart_core.pipeline.storage import read_tokens

        tokens = read_tokens(project / "data/tokens/test.parquet")
        assert tokens.metadata["encoder_type"] == etype
        assert tokens.num_codebooks == codebooks[etype]
        scores = json.loads((project / "metrics/scores.json").read_text())
        notes = json.loads((project / "metrics/scores_notes.json").read_text())
        assert notes["n_clips"] == len(tokens.clip_ids) and notes["encoder_type"] == etype and "cider_d" in scores
        rvq = json.loads((project / "metrics/rvq.json").read_text())
        assert rvq["applies"] is False
        # rvq.* does not apply: only the sub-second configure stage runs, with identical output
        if etype == "speechtokenizer":  # 8 x 1024 codes at 50 Hz, captioned from a raw file
            assert tokens.codebook_size == 1024 and tokens.metadata["frame_rate_hz"] == 50.0
            _caption_reproduces_prediction(project)
        params["rvq"]["layers"], params["rvq"]["codebook_size"] = layers, 2 ** (layers + 2)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert _ran(_run(["dvc", "repro"], project)) == ["configure"]


@pytest.mark.slow
def test_hubert_rvq_uses_the_codebooks_and_captions(project: Path):
    """hubert_rvq: HuBERT features through the same codebooks / tokenize stages as BEATs-RVQ,
    rvq.layers reruns tokenize -> train -> score, and the model captions a raw file."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["encoder"]["type"] = "hubert_rvq"
    params["rvq"].update(layers=4, codebook_size=16)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = _ran(_run(["dvc", "repro"], project))
    assert {"features", "codebooks", "tokenize", "train", "score"} <= set(ran)  # decode: 16 kHz already, as for speechtokenizer
    from clapart_core.pipeline.storage import RaggedReader, read_tokens

    with RaggedReader(project / "data/features/encoder/train.h5") as feats:
        assert feats.attrs["frame_rate_hz"] == 50.0 and feats.attrs["layer"] == 6 and feats.attrs["encoder"] == "hubert"
        assert next(iter(feats))[1].shape == (149, params["hubert"]["random"]["hidden_size"])  # 3 s at 50 frames/s
    tokens = read_tokens(project / "data/tokens/test.parquet")
    assert tokens.metadata["encoder_type"] == "hubert_rvq" and tokens.metadata["codebooks_file"] == "data/codebooks/rvq.npz"
    assert (tokens.num_codebooks, tokens.codebook_size) == (4, 16)
    assert json.loads((project / "metrics/rvq.json").read_text())["applies"] is True
    assert (project / "data/model/rvq.npz").is_file()
    _caption_reproduces_prediction(project)
    params["rvq"]["layers"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(["dvc", "repro"], project)) == ["configure", "tokenize", "train", "score"]


@pytest.mark.slow
def test_finetune_phase_starts_from_the_first_model(tmp_path: Path):
    """A `finetune` entry adds the ft_* chain: its corpus is tokenised with the first phase's
    codebooks and the model is fine-tuned from data/model (the paper's Clotho phase)."""
    proj = tmp_path / "proj"
    for name in ("clapart_core", "stages"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, proj / name)
    (proj / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", proj / ".dvc" / "config")
    params = tiny_project_params()
    params["model"]["use_clap"] = False  # keeps the run short; the CLAP chain is covered above
    # lr 0 leaves the weights as loaded, so the fine-tuned model must equal data/model bitwise
    params["finetune"] = {
        "small": {
            "data": {"root": "data/finetune/small/corpus/demo", "demo": {"n_clips": 20, "clip_seconds": 3.0}},
            "train": {"lr": 0.0, "warmup_steps": 0},
        }
    }
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        _run(args, proj)

    ran = _ran(_run(["dvc", "repro"], proj))
    ft_stages = ["ft_corpus@small", "ft_decode@small", "ft_features@small", "ft_clap@small", "ft_tokenize@small", "finetune@small", "ft_score@small"]
    assert set(ft_stages) <= set(ran)
    assert ran.index("train") < ran.index("finetune@small")
    # its corpus is read (a bad CSV found) before the first phase's long stages
    assert ran.index("ft_corpus@small") < ran.index("decode")

    from clapart_core.corpus.manifest import read_manifest
    from clapart_core.pipeline.storage import read_tokens

    main_ids = set(read_manifest(proj / "data/corpus/manifest.parquet")[0].column("clip_id").to_pylist())
    ft_tokens = read_tokens(proj / "data/finetune/small/tokens/train.parquet")
    assert ft_tokens.metadata["codebooks_file"] == "data/codebooks/rvq.npz"
    assert len(ft_tokens.clip_ids) == read_manifest(proj / "data/finetune/small/corpus/manifest.parquet")[0].column("split").to_pylist().count("train")
    assert len(main_ids) == 30  # the phases have their own corpora

    summary = json.loads((proj / "data/finetune/small/model/training_summary.json").read_text())
    assert summary["init_from"] == "data/model"
    from safetensors.numpy import load_file

    first, tuned = load_file(proj / "data/model/model.safetensors"), load_file(proj / "data/finetune/small/model/model.safetensors")
    assert first.keys() == tuned.keys() and all(np.array_equal(first[k], tuned[k]) for k in first)
    assert (proj / "data/model/tokenizer.json").read_bytes() == (proj / "data/finetune/small/model/tokenizer.json").read_bytes()
    scores = json.loads((proj / "metrics/finetune/small/scores.json").read_text())
    notes = json.loads((proj / "metrics/finetune/small/scores_notes.json").read_text())
    assert notes["n_clips"] > 0 and "cider_d" in scores
    assert (proj / "dvclive/finetune/small/metrics.json").is_file()

    # a fine-tuning recipe change reruns only the fine-tune and its scoring (and the sub-second
    # configure, whose preflight checks the fine-tuning entries)
    _run(["git", "add", "-A"], proj)
    _run(["git", "commit", "-qm", "run"], proj)
    params["finetune"]["small"]["train"]["lr"] = 1e-4
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert sorted(_ran(_run(["dvc", "repro"], proj))) == ["configure", "finetune@small", "ft_score@small"]
