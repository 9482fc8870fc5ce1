"""Tests for clapart_core.corpus.audio: decoding, downmix, resampling, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapart_core.corpus.audio import AudioDecodeError, audio_info, load_audio, resample


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return amp * np.sin(2 * np.pi * freq * t)


def _peak_freq_and_amp(x: np.ndarray, sr: int) -> tuple[float, float]:
    """Frequency (Hz, parabolic-interpolated) and amplitude of the strongest sinusoid."""
    x = x[len(x) // 10 : -len(x) // 10]  # drop filter edge transients
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w))
    k = int(spec[1:-1].argmax()) + 1
    a, b, c = np.log(spec[k - 1 : k + 2])
    delta = 0.5 * (a - c) / (a - 2 * b + c)
    freq = (k + delta) * sr / len(x)
    amp = 2 * spec[k] / w.sum()
    return freq, amp


def test_resample_keeps_frequency_and_amplitude() -> None:
    x = _sine(1000.0, 44100, 1.0, amp=0.5)
    y = resample(x, 44100, 16000)
    assert y.dtype == np.float32
    assert len(y) == int(np.ceil(len(x) * 16000 / 44100))
    freq, amp = _peak_freq_and_amp(y, 16000)
    assert abs(freq - 1000.0) < 0.5
    assert abs(amp - 0.5) < 0.005


def test_resample_is_anti_aliased() -> None:
    # 10 kHz is above the 8 kHz Nyquist of 16 kHz: a naive decimator would fold it to 6 kHz.
    y = resample(_sine(10000.0, 44100, 1.0, amp=0.5), 44100, 16000)
    core = y[len(y) // 10 : -len(y) // 10]
    assert np.sqrt(np.mean(core**2)) < 0.5 / np.sqrt(2) * 10 ** (-50 / 20)


def test_resample_identity_and_errors() -> None:
    x = np.arange(10, dtype=np.float64)
    assert np.array_equal(resample(x, 16000, 16000), x.astype(np.float32))
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((2, 10)), 16000, 8000)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 8000)


def test_load_stereo_int24_44k(tmp_path: Path) -> None:
    left = _sine(1000.0, 44100, 1.0, amp=0.8)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), 44100, subtype="PCM_24")
    assert audio_info(path) == (44100, 2, 44100)
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == 16000
    freq, amp = _peak_freq_and_amp(y, 16000)
    assert abs(freq - 1000.0) < 0.5
    assert abs(amp - 0.4) < 0.005  # mean downmix halves a one-sided signal
    assert np.array_equal(y, load_audio(path, 16000))  # deterministic


@pytest.mark.parametrize(
    ("name", "subtype", "sr"),
    [("f.wav", "FLOAT", 22050), ("u8.wav", "PCM_U8", 8000), ("s8.flac", "PCM_S8", 48000),
     ("i32.wav", "PCM_32", 96000), ("i16.flac", "PCM_16", 32000)],
)
def test_load_formats(tmp_path: Path, name: str, subtype: str, sr: int) -> None:
    x = _sine(440.0, sr, 0.5, amp=0.6)
    path = tmp_path / name
    sf.write(path, x, sr, subtype=subtype)
    y = load_audio(path, 16000)
    assert len(y) == int(np.ceil(len(x) * 16000 / sr))
    freq, amp = _peak_freq_and_amp(y, 16000)
    assert abs(freq - 440.0) < 1.0
    assert abs(amp - 0.6) < (0.02 if "8" in subtype else 0.005)  # 8-bit: coarse quantisation


def test_load_multichannel_mean_downmix(tmp_path: Path) -> None:
    chans = np.stack([np.full(1600, 0.1 * (c + 1)) for c in range(6)], axis=1)
    path = tmp_path / "six.wav"
    sf.write(path, chans, 16000, subtype="FLOAT")
    y = load_audio(path, 16000)
    assert np.allclose(y, 0.35, atol=1e-6)


def test_crop_matches_prefix_of_full_decode(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.wav"
    sf.write(path, 0.3 * rng.standard_normal(44100 * 2), 44100, subtype="PCM_16")
    full = load_audio(path, 16000)
    crop = load_audio(path, 16000, max_seconds=0.75)
    assert len(crop) == 12000
    np.testing.assert_allclose(crop, full[:12000], atol=1e-6)


def test_float_overrange_is_clipped(tmp_path: Path) -> None:
    path = tmp_path / "hot.wav"
    sf.write(path, np.full(800, 1.5), 16000, subtype="FLOAT")
    y = load_audio(path, 16000)
    assert y.max() == 1.0 and y.min() >= -1.0


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "missing"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: sf.write(p, np.zeros(0), 16000), "empty"),
        (lambda p: p.write_bytes(b"RIFF this is not audio at all" * 20), "unreadable"),
        (lambda p: sf.write(p, np.array([0.0, np.nan, 0.1] * 100), 16000, subtype="FLOAT"), "non_finite"),
        (lambda p: sf.write(p, np.zeros(100), 4000), "bad_rate"),
        (lambda p: p.mkdir(), "unreadable"),
    ],
)
def test_decode_errors(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path, 16000)
    assert info.value.reason == reason
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_too_many_channels(tmp_path: Path) -> None:
    path = tmp_path / "nine.wav"
    sf.write(path, np.zeros((100, 9)), 16000)
    with pytest.raises(AudioDecodeError) as info:
        audio_info(path)
    assert info.value.reason == "bad_channels"


def test_a_window_reads_only_its_frames_and_matches_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_audio(start_seconds=, max_seconds=) is the whole file's slice (up to filter edges),
    aligned to the sample, and reads only the window plus a 0.05 s margin from the file."""
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((44100 * 6, 2))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    whole = load_audio(path, 16000)
    reads: list[tuple[int, int]] = []
    real_read = sf.read

    def spy(*args, **kwargs):
        reads.append((kwargs["start"], kwargs["stop"]))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(sf, "read", spy)
    window = load_audio(path, 16000, max_seconds=2.0, start_seconds=3.0)
    assert window.shape == (32000,)
    assert reads == [(3 * 44100 - 2205, 5 * 44100 + 2205)]  # the window and its margins, nothing else
    inner = slice(400, -400)  # away from the margins' filter edges
    np.testing.assert_allclose(window[inner], whole[48000:80000][inner], atol=2e-3)
    # the tail window stops at the end of the file; a start past it is an error naming the length
    assert load_audio(path, 16000, max_seconds=2.0, start_seconds=5.0).shape == (16000,)
    with pytest.raises(AudioDecodeError, match=r"nothing to read from 6 s on: the file is 6\.000 s long"):
        load_audio(path, 16000, max_seconds=2.0, start_seconds=6.0)
