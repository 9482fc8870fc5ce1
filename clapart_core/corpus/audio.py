"""Audio decoding: any common file -> float32 mono waveform at the rate an encoder needs.

Reading goes through libsndfile (via ``soundfile``): WAV/FLAC/OGG/AIFF and MP3 where the
linked libsndfile supports it, integer PCM of 8/16/24/32 bits and float files. Channels are
mean-downmixed and the rate is changed with scipy's polyphase resampler, which is exact
rational-ratio, anti-aliased and deterministic (no FFT length effects, no randomness).

Every failure is an :class:`AudioDecodeError` whose ``reason`` is a short machine-friendly
string (for skip/flag reports) and whose message names the file and the problem.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from clapart_core.pipeline.errors import UserError

__all__ = [
    "AudioDecodeError",
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "MIN_CLIP_SECONDS",
    "MIN_SAMPLE_RATE",
    "audio_info",
    "load_audio",
    "pad_to_min_length",
    "resample",
]

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 96_000
MAX_CHANNELS = 8

#: the shortest clip every encoder can code: one BEATs patch, 16 fbank frames of 25 ms every
#: 10 ms = (16 - 1) * 160 + 400 = 2800 samples at 16 kHz (EnCodec and CLAP take shorter clips)
MIN_CLIP_SECONDS = 2800 / 16_000

# Extra source frames read past a ``max_seconds`` crop so the resampling filter sees real
# signal (not zero padding) at the crop edge; the tail is cut off after resampling. 0.05 s
# covers the default resample_poly filter half-length (10 taps per phase of the slower rate).
_CROP_MARGIN_S = 0.05


class AudioDecodeError(UserError, ValueError):
    """An audio file could not be decoded into a usable waveform.

    Attributes:
        path: the offending file.
        reason: one of ``"missing"``, ``"empty"``, ``"unreadable"``, ``"non_finite"``,
            ``"bad_channels"``, ``"bad_rate"``, ``"too_short"`` -- stable strings for skip/flag reports.
    """

    REASONS = frozenset(
        {"missing", "empty", "unreadable", "non_finite", "bad_channels", "bad_rate", "too_short"}
    )

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown AudioDecodeError reason {reason!r}")
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {detail} [{reason}]")


def _check_readable(path: Path) -> None:
    """Raise for a path that is absent, not a regular file, or zero bytes long."""
    if not path.exists():
        raise AudioDecodeError(path, "missing", "audio file does not exist")
    if path.is_dir():
        raise AudioDecodeError(path, "unreadable", "is a directory, not an audio file")
    if not path.is_file():
        raise AudioDecodeError(path, "unreadable", "path is not a regular file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, "empty", "audio file is empty (0 bytes)")


def _read_header(path: Path) -> tuple[int, int, int]:
    """``(sample_rate, channels, frames)`` from the header; libsndfile errors -> 'unreadable'."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioDecodeError(path, "unreadable", f"not a readable audio file ({err})") from err
    return int(info.samplerate), int(info.channels), int(info.frames)


def _check_format(path: Path, sample_rate: int, channels: int, frames: int) -> None:
    """Raise for headers outside the supported envelope (rates 8-96 kHz, 1-8 channels)."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            path,
            "bad_rate",
            f"sample rate {sample_rate} Hz is outside the supported "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioDecodeError(
            path, "bad_channels", f"{channels} channels is outside the supported 1-{MAX_CHANNELS}"
        )
    if frames <= 0:
        raise AudioDecodeError(path, "empty", "audio file contains no samples")


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """Cheap header-only read.

    Returns:
        ``(sample_rate [Hz], channels, frames)``; duration in seconds is ``frames / sample_rate``.

    Raises:
        AudioDecodeError: missing/empty/unreadable file or unsupported rate/channel count.
    """
    p = Path(path)
    _check_readable(p)
    sample_rate, channels, frames = _read_header(p)
    _check_format(p, sample_rate, channels, frames)
    return sample_rate, channels, frames


def resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Change the sample rate of a mono waveform with an anti-aliased polyphase filter.

    Args:
        wave: ``[S]`` samples at ``sr_in`` Hz (any float or int dtype).
        sr_in: source rate in Hz (> 0).
        sr_out: target rate in Hz (> 0).

    Returns:
        float32 ``[ceil(S * sr_out / sr_in)]`` at ``sr_out`` Hz. The ratio is reduced with
        ``gcd`` so e.g. 44.1 kHz -> 16 kHz is exactly 160/441; the Kaiser-windowed FIR of
        ``resample_poly`` low-passes at the lower Nyquist, so nothing aliases.
    """
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    x = np.asarray(wave)
    if x.ndim != 1:
        raise ValueError(f"resample expects a mono [S] waveform, got shape {x.shape}")
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=True)
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = int(sr_out) // g, int(sr_in) // g
    # float64 filtering: the long FIR (thousands of taps at ratios like 160/441) accumulates
    # rounding error in float32; the cast back is the only lossy step.
    y = resample_poly(x.astype(np.float64, copy=False), up, down)
    return y.astype(np.float32)


def load_audio(
    path: str | Path, sample_rate: int, max_seconds: float | None = None, start_seconds: float = 0.0
) -> np.ndarray:
    """Decode an audio file (or one stretch of it) to a float32 mono waveform at ``sample_rate``.

    Only the frames asked for (plus a 0.05 s filter margin on each side) are read from the file,
    so memory follows ``max_seconds``, not the file's length.

    Args:
        path: audio file (wav/flac/ogg/aiff; mp3 when libsndfile supports it), 1-8 channels,
            8-96 kHz, integer (8/16/24/32-bit) or float samples.
        sample_rate: output rate in Hz.
        max_seconds: if given, keep only ``max_seconds`` seconds (> 0) from ``start_seconds`` on.
        start_seconds: where to start, in seconds from the file's beginning (>= 0; a window of a
            long file). Sample 0 of the result is the file's time ``start_seconds``.

    Returns:
        float32 ``[S]`` with values in [-1, 1], ``S = ceil(frames * sample_rate / sr_file)`` for the
        whole file (at most ``floor(max_seconds * sample_rate)`` when cropping). Channels are
        averaged; values are clipped to [-1, 1] because float files and resampling overshoot of
        full-scale signals can exceed it, and the encoders assume that range.

    Raises:
        AudioDecodeError: reason ``missing``, ``empty``, ``unreadable``, ``non_finite``,
            ``bad_channels`` or ``bad_rate``.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if not start_seconds >= 0:
        raise ValueError(f"start_seconds must be >= 0, got {start_seconds}")
    p = Path(path)
    sr_file, _channels, frames = audio_info(p)

    start = round(start_seconds * sr_file)
    if start >= frames:
        raise AudioDecodeError(p, "empty", f"nothing to read from {start_seconds:g} s on: the file is {frames / sr_file:.3f} s long")
    # A window that starts inside the file reads a margin before its start too, so the resampling
    # filter sees real signal there rather than zeros. The margin is a whole number of the
    # resampler's input periods (sr_file / gcd), so the output grid stays aligned to `start`.
    period = sr_file // math.gcd(sr_file, sample_rate)
    lead = (min(start, math.ceil(_CROP_MARGIN_S * sr_file)) // period) * period
    stop = frames
    if max_seconds is not None:
        stop = min(frames, start + math.ceil((max_seconds + _CROP_MARGIN_S) * sr_file))
    try:
        data, _ = sf.read(str(p), start=start - lead, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioDecodeError(p, "unreadable", f"could not decode samples ({err})") from err
    if data.shape[0] <= lead:
        raise AudioDecodeError(p, "empty", "audio file contains no decodable samples")
    if not np.isfinite(data).all():
        raise AudioDecodeError(p, "non_finite", "audio contains NaN or infinite samples")

    mono = data.mean(axis=1, dtype=np.float64)
    del data
    wave = resample(mono, sr_file, sample_rate)
    skip = lead * sample_rate // sr_file  # exact: lead is a multiple of the input period
    if max_seconds is not None:
        wave = wave[skip : skip + math.floor(max_seconds * sample_rate)]
    elif skip:
        wave = wave[skip:]
    np.clip(wave, -1.0, 1.0, out=wave)
    return wave


def pad_to_min_length(wave: np.ndarray, sample_rate: int, min_seconds: float = MIN_CLIP_SECONDS) -> tuple[np.ndarray, bool]:
    """Append silence to a clip shorter than ``min_seconds``, so that every encoder can code it.

    A click or a UI blip (tens of ms) is a real sound to caption, but BEATs needs one patch
    (:data:`MIN_CLIP_SECONDS`). Zeros after the sound are what a longer recording of it would
    hold, and the encoders see them as silence.

    Args:
        wave: ``[S]`` mono samples at ``sample_rate`` Hz.
        min_seconds: the length to reach.

    Returns:
        ``(wave, padded)``: ``[max(S, ceil(min_seconds * sample_rate))]`` of ``wave``'s dtype (the
        input itself when long enough) and whether silence was appended.
    """
    # round first: 0.175 * 16000 is 2800.0000000000005 in floating point, and 2801 samples would
    # make the padded length depend on that rounding error
    need = math.ceil(round(min_seconds * sample_rate, 6))
    if len(wave) >= need:
        return wave, False
    return np.concatenate([wave, np.zeros(need - len(wave), dtype=wave.dtype)]), True
