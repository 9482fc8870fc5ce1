"""The Kaldi filterbank of clapart_core.encoders.fbank against torchaudio's output (tests/fixtures/beats).

Tolerances are the reference README's: float32 rounding of the 32768-scaled signal moves the
quietest mel bins of torchaudio itself by ~1e-2 between machines and precisions, so raw values
are checked by max (<= 3e-2) *and* mean (<= 2e-4) deviation; the mean is what catches a wrong
detail (a missing DC removal or pre-emphasis, a periodic window, ... all move it by >= 1e-2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clapart_core.encoders.fbank import (
    FBANK_MEAN,
    FBANK_STD,
    beats_fbank,
    kaldi_fbank,
    mel_banks,
    num_frames,
    povey_window,
)

FIXTURES = Path(__file__).parent / "fixtures" / "beats"


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "inputs.npz"))


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "fbank_reference.npz"))


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "expected_beats_tiny.npz"))


def test_num_frames_is_kaldi_snip_edges() -> None:
    assert [num_frames(s) for s in (0, 399, 400, 559, 560, 16000, 160000)] == [0, 0, 1, 1, 2, 98, 998]


def test_povey_window_matches_torchaudio(reference: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(povey_window().numpy(), reference["povey_window"], rtol=0, atol=1e-7)


def test_mel_banks_match_torchaudio(reference: dict[str, np.ndarray]) -> None:
    banks = mel_banks().numpy()
    assert banks.shape == (128, 257)
    assert np.all(banks[:, 256] == 0.0), "the Nyquist bin must have weight 0"
    ref = reference["mel_banks"]
    # Same support (which FFT bins each filter touches) and same weights up to float32 rounding
    # of the mel values (1 ulp of ~2000 mel over a ~20 mel filter slope is ~1e-5).
    np.testing.assert_array_equal(banks[:, :256] > 0, ref > 0)
    np.testing.assert_allclose(banks[:, :256], ref, rtol=0, atol=2e-5)
    assert not banks[3].any(), "filter 3 contains no FFT bin in Kaldi's float32 layout"
    assert [int((banks[i] > 0).sum()) for i in range(3)] == [1, 1, 1]


@pytest.mark.parametrize("clip", [0, 1])
def test_raw_fbank_matches_torchaudio(clip: int, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert int(reference["source_rows"][clip]) == clip
    wave = torch.from_numpy(inputs["waveforms"][clip, : inputs["lengths"][clip]])[None]
    ours = kaldi_fbank(wave * 2**15)[0].numpy()
    ref = reference[f"fbank_{clip}"]
    assert ours.shape == ref.shape == (num_frames(int(inputs["lengths"][clip])), 128)
    diff = np.abs(ours - ref)
    assert diff.max() <= 3e-2 and diff.mean() <= 2e-4, (diff.max(), diff.mean())
    # Away from the float32 noise floor the match is much tighter: compare the bins within
    # 10 nats of each frame's peak.
    loud = ref > ref.max(axis=1, keepdims=True) - 10.0
    assert np.abs(ours - ref)[loud].max() <= 1e-3


def test_normalised_batched_fbank_matches_official_preprocess(inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert float(expected["fbank_mean"]) == FBANK_MEAN and float(expected["fbank_std"]) == FBANK_STD
    ours = beats_fbank(torch.from_numpy(inputs["waveforms"])).numpy()
    ref = expected["fbank"]
    assert ours.shape == ref.shape == (3, 368, 128)
    diff = np.abs(ours - ref)
    assert diff.max() <= 3e-3 and diff.mean() <= 2e-5, (diff.max(), diff.mean())
    # Frames made only of zero padding sit exactly at the normalised log floor.
    np.testing.assert_allclose(ours[0, 100:], -2.3916929, rtol=0, atol=1e-6)


def test_fbank_normalisation_uses_twice_the_std(inputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Dividing by std instead of 2 * std is invisible end to end (LayerNorm follows a bias-free
    conv) but must be caught here: the batched tolerance above is far tighter than its effect."""
    wave = torch.from_numpy(inputs["waveforms"])
    wrong = beats_fbank(wave, fbank_std=FBANK_STD / 2).numpy()
    assert np.abs(wrong - expected["fbank"]).mean() > 100 * 2e-5


def test_batched_rows_equal_single_rows(inputs: dict[str, np.ndarray]) -> None:
    wave = torch.from_numpy(inputs["waveforms"])
    batched = beats_fbank(wave)
    for i in range(wave.shape[0]):
        torch.testing.assert_close(batched[i : i + 1], beats_fbank(wave[i : i + 1]), rtol=0, atol=1e-6)
        n = num_frames(int(inputs["lengths"][i]))
        # A clip's own frames do not depend on the padding after it.
        torch.testing.assert_close(
            batched[i, :n], beats_fbank(wave[i : i + 1, : int(inputs["lengths"][i])])[0], rtol=0, atol=1e-6
        )


def test_fbank_is_deterministic_and_on_the_input_device(inputs: dict[str, np.ndarray]) -> None:
    wave = torch.from_numpy(inputs["waveforms"][:1])
    a, b = beats_fbank(wave), beats_fbank(wave)
    assert torch.equal(a, b) and a.device == wave.device and a.dtype == torch.float32


@pytest.mark.parametrize(
    "bad, message",
    [(torch.zeros(399)[None], "at least 400"), (torch.zeros(1, 1, 800), r"\[B, S\]"), (torch.zeros(1, 800, dtype=torch.int16), "float")],
)
def test_fbank_rejects_bad_input(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kaldi_fbank(bad)
