"""Which settings each token stage sees, per encoder.type."""

import copy
from pathlib import Path

import pytest
import yaml

from clapart_core.pipeline.config import resolve, write_configs

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def _with(**changes: object) -> dict:
    p = copy.deepcopy(PARAMS)
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        p[section][leaf] = value
    return p


@pytest.mark.parametrize("etype", ["beats_rvq", "hubert_rvq"])
def test_rvq_layers_only_reaches_tokenize_under_the_codebook_types(etype):
    a, b = resolve(_with(encoder__type=etype)), resolve(_with(encoder__type=etype, rvq__layers=8))
    assert [k for k in a if a[k] != b[k]] == ["tokenize"]
    c = resolve(_with(encoder__type=etype, rvq__codebook_size=64))
    assert [k for k in a if a[k] != c[k]] == ["codebooks"]
    assert a["codebooks"]["fit"] is True and a["tokenize"] == {"type": etype, "layers": PARAMS["rvq"]["layers"]}


def test_hubert_settings_reach_only_its_features():
    a = resolve(_with(encoder__type="hubert_rvq"))
    assert a["features"]["encoder"] == {"checkpoint": None, "random": PARAMS["hubert"]["random"], "seed": PARAMS["seed"], "layer": 6}
    assert a["features"]["batch_size"] == PARAMS["hubert"]["batch_size"]
    b = resolve(_with(encoder__type="hubert_rvq", hubert__layer=3))
    assert [k for k in a if a[k] != b[k]] == ["features"]
    # and not the other types: a HuBERT or SpeechTokenizer setting reruns nothing under beats_rvq
    base = resolve(_with(encoder__type="beats_rvq"))
    assert resolve(_with(encoder__type="beats_rvq", hubert__layer=3, speechtokenizer__batch_size=1)) == base


@pytest.mark.parametrize("etype", ["beats_tokenizer", "encodec", "speechtokenizer"])
def test_rvq_params_do_not_apply_to_discrete_types(etype):
    a = resolve(_with(encoder__type=etype))
    b = resolve(_with(encoder__type=etype, rvq__layers=2, rvq__codebook_size=8, rvq__max_layers=4))
    assert a == b and a["codebooks"]["fit"] is False
    # a BEATs (rvq type) setting does not reach the discrete encoders either
    c = resolve(_with(encoder__type=etype, beats__batch_size=99))
    assert a == c


def test_decode_rates_follow_encoder():
    assert resolve(_with(encoder__type="beats_rvq"))["decode"]["sample_rates"] == [16000, 48000]
    assert resolve(_with(encoder__type="encodec"))["decode"]["sample_rates"] == [24000, 48000]
    assert resolve(_with(encoder__type="hubert_rvq"))["decode"]["sample_rates"] == [16000, 48000]
    assert resolve(_with(encoder__type="speechtokenizer"))["decode"]["sample_rates"] == [16000, 48000]
    with pytest.raises(ValueError, match="encoder.type='wav2vec'"):
        resolve(_with(encoder__type="wav2vec"))


def test_written_configs_are_byte_stable(tmp_path):
    write_configs(_with(encoder__type="encodec"), tmp_path)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_configs(_with(encoder__type="encodec", rvq__layers=1), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    assert sorted(first) == ["codebooks.json", "decode.json", "features.json", "tokenize.json"]


def test_preflight_names_missing_models_in_one_line(tmp_path, monkeypatch):
    from clapart_core.pipeline.config import PreflightError, preflight

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert preflight(_with()) == []  # the demo needs nothing
    with pytest.raises(PreflightError, match=r"beats.checkpoint = '/nope/BEATs.pt' does not exist"):
        preflight(_with(encoder__type="beats_rvq", beats__checkpoint="/nope/BEATs.pt"))
    with pytest.raises(PreflightError, match=r"model.pretrained = 'facebook/bart-base' is neither") as err:
        preflight(_with(model__pretrained="facebook/bart-base"))
    assert "\n" not in str(err.value) and "hf download facebook/bart-base" in str(err.value)
    # under encodec the BEATs checkpoint is irrelevant, the EnCodec one is checked
    ok_dir = tmp_path / "encodec"
    ok_dir.mkdir()
    (ok_dir / "config.json").write_text("{}")
    assert preflight(_with(encoder__type="encodec", beats__checkpoint="/nope", encodec__checkpoint=str(ok_dir))) == []
    with pytest.raises(PreflightError, match="encodec.checkpoint"):
        preflight(_with(encoder__type="encodec", encodec__checkpoint=str(tmp_path / "missing")))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert preflight(_with(clap__checkpoint="laion/clap-htsat-fused")) == ["clap.checkpoint = 'laion/clap-htsat-fused' is not cached: it will be downloaded"]


def test_preflight_refuses_max_frames_off_the_beats_grid_and_bad_layers():
    """Both BEATs token types need model.max_frames to be a multiple of their 8 frequency patches
    (refused in the sub-second configure stage, not after hours of features); EnCodec takes any."""
    from clapart_core.pipeline.config import PreflightError, preflight

    for etype in ("beats_rvq", "beats_tokenizer"):
        with pytest.raises(PreflightError, match=r"^params.yaml: model.max_frames = 1020 is not a multiple of 8, .*; use 1016$"):
            preflight(_with(encoder__type=etype, model__max_frames=1020))
    assert preflight(_with(encoder__type="encodec", model__max_frames=1021)) == []
    assert preflight(_with(beats__layer=2)) == []  # the demo's random BEATs has 2 layers
    with pytest.raises(PreflightError, match=r"beats.layer = 3 but the random BEATs has 2 layers"):
        preflight(_with(beats__layer=3))
    with pytest.raises(PreflightError, match=r"beats.layer = 0 must be a layer number \(1 = the first\) or null"):
        preflight(_with(beats__layer=0))
    # beats.layer reaches only the features spec (so features -> everything after reruns), and only under beats_rvq
    a, b = resolve(_with()), resolve(_with(beats__layer=1))
    assert [k for k in a if a[k] != b[k]] == ["features"] and b["features"]["encoder"]["layer"] == 1
    assert resolve(_with(encoder__type="encodec")) == resolve(_with(encoder__type="encodec", beats__layer=1))


def test_preflight_checks_the_speech_types_settings(tmp_path, monkeypatch):
    from clapart_core.pipeline.config import PreflightError, preflight

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert preflight(_with(encoder__type="hubert_rvq")) == [] and preflight(_with(encoder__type="speechtokenizer")) == []
    # hubert.layer must be a layer of the model: the random one's depth, or a model directory's config.json
    with pytest.raises(PreflightError, match=r"hubert.layer = 7 is not a Transformer layer of the random HuBERT \(hubert.random\) \(1\.\.6\)"):
        preflight(_with(encoder__type="hubert_rvq", hubert__layer=7))
    with pytest.raises(PreflightError, match=r"hubert.layer = 0 "):
        preflight(_with(encoder__type="hubert_rvq", hubert__layer=0))
    model = tmp_path / "hubert"
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 12}')
    assert preflight(_with(encoder__type="hubert_rvq", hubert__checkpoint=str(model), hubert__layer=12)) == []
    with pytest.raises(PreflightError, match=r"hubert.layer = 13 is not a Transformer layer of .*hubert.* \(1\.\.12\)"):
        preflight(_with(encoder__type="hubert_rvq", hubert__checkpoint=str(model), hubert__layer=13))
    with pytest.raises(PreflightError, match=r"hubert.checkpoint = .* is neither a local model directory nor in the Hugging Face cache"):
        preflight(_with(encoder__type="hubert_rvq", hubert__checkpoint="facebook/hubert-base-ls960"))
    # SpeechTokenizer: the checkpoint file and its config (by default beside it), both or neither
    ckpt = tmp_path / "st" / "SpeechTokenizer.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    with pytest.raises(PreflightError, match=r"speechtokenizer.config = '.*st/config.json' does not exist"):
        preflight(_with(encoder__type="speechtokenizer", speechtokenizer__checkpoint=str(ckpt)))
    (ckpt.parent / "config.json").write_text("{}")
    assert preflight(_with(encoder__type="speechtokenizer", speechtokenizer__checkpoint=str(ckpt))) == []
    with pytest.raises(PreflightError, match=r"speechtokenizer.checkpoint = '/nope.pt' does not exist"):
        preflight(_with(encoder__type="speechtokenizer", speechtokenizer__checkpoint="/nope.pt"))
    with pytest.raises(PreflightError, match="speechtokenizer.config is set but speechtokenizer.checkpoint is null"):
        preflight(_with(encoder__type="speechtokenizer", speechtokenizer__config=str(ckpt.parent / "config.json")))
    # neither matters under another type
    assert preflight(_with(encoder__type="beats_rvq", hubert__layer=99, speechtokenizer__checkpoint="/nope.pt")) == []
