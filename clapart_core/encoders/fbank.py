"""Kaldi-compatible log-mel filterbank, as BEATs computes its input (torch only, batched).

BEATs (and its acoustic tokenizer) feed the patch encoder with the 128-bin Kaldi ``fbank`` of
``torchaudio.compliance.kaldi`` at its default settings, applied to the waveform scaled to the
16-bit range, then normalised with the fixed AudioSet statistics:

    fbank = (log_mel(wave * 2**15) - 15.41663) / (2 * 6.55582)          # note the factor 2

This module recomputes exactly that without torchaudio (which pins and pulls its own torch),
for a whole batch at once and on whatever device the waveform lives on. The Kaldi recipe,
per 25 ms frame (400 samples) every 10 ms (160 samples), ``snip_edges`` style (only complete
frames, trailing samples ignored):

1. remove the frame's own mean (DC offset); no dither;
2. pre-emphasis ``x[n] - 0.97 x[n-1]``, the first sample being its own predecessor;
3. Povey window: the symmetric 400-point Hann window raised to the power 0.85;
4. zero-pad to 512 samples, power spectrum ``|rfft|^2`` (257 bins);
5. 128 triangular filters, equally spaced on the Kaldi mel scale ``1127 ln(1 + f / 700)``
   between 20 Hz and 8 kHz, evaluated at the bin frequencies ``k * 31.25 Hz``, in float32 like
   Kaldi/torchaudio (the Nyquist bin gets weight 0; filter 3 covers no FFT bin at all, so that
   column is always the log floor -- this is what the published models were trained on);
6. natural log with a floor at float32 epsilon (2^-23).

Accuracy (tests/test_fbank.py, against torchaudio's output stored in the fixtures): the raw
log-mel values match to a few 1e-6 typically; the worst cases (~1e-2) sit only in bins 20-30
nats below the frame's peak where float32 rounding of the 32768-scaled signal dominates, and
torchaudio itself moves by the same amount between float32 and float64.
"""
from __future__ import annotations

import functools
import math

import torch

SAMPLE_RATE: int = 16000
"""Sample rate the BEATs front end assumes, in Hz."""
FRAME_LENGTH: int = 400
"""Analysis window, in samples (25 ms at 16 kHz)."""
FRAME_SHIFT: int = 160
"""Hop between frames, in samples (10 ms at 16 kHz)."""
N_FFT: int = 512
"""FFT size: the window length rounded up to a power of two, as Kaldi does."""
NUM_MEL_BINS: int = 128
WAVE_SCALE: float = 2.0**15
"""BEATs multiplies the [-1, 1] waveform by this before the fbank (no rounding, no clipping)."""
FBANK_MEAN: float = 15.41663
"""Mean of the raw log-mel values over AudioSet (default of the official ``preprocess``)."""
FBANK_STD: float = 6.55582
"""Standard deviation of the raw log-mel values; the official code divides by twice this."""

_PREEMPHASIS: float = 0.97
_POVEY_POWER: float = 0.85
_LOW_FREQ: float = 20.0
_LOG_FLOOR: float = torch.finfo(torch.float32).eps  # Kaldi floors the energies at float eps


def num_frames(num_samples: int) -> int:
    """Number of complete 25 ms / 10 ms frames in ``num_samples`` samples (0 if fewer than 400).

    ``F = 1 + floor((S - 400) / 160)``: Kaldi's ``snip_edges=True`` framing.
    """
    if num_samples < FRAME_LENGTH:
        return 0
    return 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


@functools.cache
def _povey_window_cpu() -> torch.Tensor:
    # Built once on the CPU, outside any inference-mode context so the cached tensor can also
    # be used by code that records autograd.
    with torch.inference_mode(False):
        # Symmetric Hann (denominator N - 1), not the periodic one of most STFT code.
        hann = torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float32)
        return hann.pow(_POVEY_POWER)


def povey_window(device: torch.device | str | None = None) -> torch.Tensor:
    """Kaldi's Povey window, float32: ``[400]``."""
    return _povey_window_cpu().to(device)


def _kaldi_mel(freq_hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * (1.0 + freq_hz / 700.0).log()


@functools.cache
def _mel_banks_cpu(num_mel_bins: int) -> torch.Tensor:
    with torch.inference_mode(False):
        mel_low = 1127.0 * math.log(1.0 + _LOW_FREQ / 700.0)
        mel_high = 1127.0 * math.log(1.0 + (SAMPLE_RATE / 2) / 700.0)
        mel_step = (mel_high - mel_low) / (num_mel_bins + 1)
        # Filter edges: num_mel_bins + 2 equally spaced mel points. Kept in float32 because
        # that is how Kaldi/torchaudio evaluate them; a float64 matrix moves the quiet bins.
        edges = mel_low + torch.arange(num_mel_bins + 2, dtype=torch.float32) * mel_step
        left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        bin_width_hz = SAMPLE_RATE / N_FFT
        bin_mel = _kaldi_mel(bin_width_hz * torch.arange(N_FFT // 2, dtype=torch.float32))[None]
        rising = (bin_mel - left) / (centre - left)
        falling = (right - bin_mel) / (right - centre)
        banks = torch.clamp(torch.minimum(rising, falling), min=0.0)  # [M, 256]
        # The Nyquist bin (257th rfft output) has weight 0 in Kaldi.
        return torch.nn.functional.pad(banks, (0, 1))


def mel_banks(num_mel_bins: int = NUM_MEL_BINS, device: torch.device | str | None = None) -> torch.Tensor:
    """Kaldi's triangular mel filters over the 257 rfft bins, float32: ``[num_mel_bins, 257]``."""
    return _mel_banks_cpu(num_mel_bins).to(device)


def kaldi_fbank(wave: torch.Tensor, num_mel_bins: int = NUM_MEL_BINS) -> torch.Tensor:
    """Raw Kaldi log-mel filterbank of already-scaled waveforms: ``[B, S] -> [B, F, num_mel_bins]``.

    Equals ``torchaudio.compliance.kaldi.fbank(row[None], num_mel_bins=num_mel_bins,
    sample_frequency=16000, frame_length=25, frame_shift=10)`` for every row, computed for the
    whole batch at once on ``wave.device``. ``wave`` is float (any scale: BEATs passes
    ``wave * 2**15``); ``F = 1 + (S - 400) // 160``. Output in natural-log units.
    """
    if wave.dim() != 2 or not wave.is_floating_point():
        raise ValueError(
            f"kaldi_fbank expects a float waveform batch of shape [B, S], got {tuple(wave.shape)} {wave.dtype}"
        )
    if wave.shape[1] < FRAME_LENGTH:
        raise ValueError(
            f"kaldi_fbank needs at least {FRAME_LENGTH} samples (one 25 ms frame), got {wave.shape[1]}"
        )
    frames = wave.unfold(1, FRAME_LENGTH, FRAME_SHIFT)  # [B, F, 400], a view
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - _PREEMPHASIS * previous
    frames = frames * povey_window(wave.device).to(wave.dtype)
    spectrum = torch.fft.rfft(frames, n=N_FFT)  # zero-padded to 512: [B, F, 257]
    # |X|^2 via abs() then square, the same rounding path as torchaudio.
    power = spectrum.abs().pow(2.0)
    energies = power @ mel_banks(num_mel_bins, wave.device).to(wave.dtype).T  # [B, F, M]
    return energies.clamp(min=_LOG_FLOOR).log()


def beats_fbank(
    wave: torch.Tensor,
    fbank_mean: float = FBANK_MEAN,
    fbank_std: float = FBANK_STD,
) -> torch.Tensor:
    """BEATs' normalised input features: ``[B, S]`` waveform in [-1, 1] at 16 kHz -> ``[B, F, 128]``.

    ``(kaldi_fbank(wave * 2**15) - fbank_mean) / (2 * fbank_std)``, the official
    ``BEATs.preprocess`` with its default statistics. Every row is processed as a whole
    signal: zero padding at the end of a row is part of it (its frames come out at the log
    floor, -2.3916929 after normalisation).
    """
    return (kaldi_fbank(wave * WAVE_SCALE) - fbank_mean) / (2.0 * fbank_std)
