"""What every encoder shares: the input sample rates, the one rule that rebuilds a model from its
*spec*, and the error for a named model that is not here.

A spec is how an artifact records the encoder that made it, so that ``clapart caption`` can
rebuild exactly that encoder: ``{"checkpoint": path or hub id}`` for published weights, or
``{"random": config overrides, "seed": int}`` for the seeded random models the offline demo and
the tests use (other keys, e.g. EnCodec's ``bandwidth``, say how the model is run).

No torch import: the configure stage reads the rates through the registry in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from clapart_core.pipeline.errors import UserError

# Input rates in Hz. The decode stage writes the audio at the rates the configured encoders read.
BEATS_SAMPLE_RATE = 16_000  # BEATs and its tokenizer: Kaldi fbank, 25 ms / 10 ms frames at 16 kHz
ENCODEC_SAMPLE_RATE = 24_000  # facebook/encodec_24khz, EnCLAP's codec
CLAP_SAMPLE_RATE = 48_000  # laion/clap-htsat-*

# BEATs codes per time step: 128 mel bins in 16-bin frequency patches.
BEATS_FREQ_PATCHES = 8
# BEATs codes per second: 100 fbank frames/s, 16 frames per time patch, 8 frequency patches each.
BEATS_PATCH_RATE_HZ = 100 / 16 * BEATS_FREQ_PATCHES

Model = TypeVar("Model")


class ModelNotFoundError(UserError, RuntimeError):
    """A named pretrained model is not available (offline or wrong path)."""


def checkpoint_or_random(spec: Mapping[str, Any], load: Callable[[str], Model], random: Callable[[Any, int], Model], what: str) -> Model:
    """The encoder a spec names: ``load(spec["checkpoint"])`` when it names a checkpoint, else the
    seeded random model ``random(spec["random"], spec["seed"])`` (no ``random`` key: the defaults).

    Raises:
        ValueError: the spec names neither a checkpoint nor a seed (``what`` names the encoder).
    """
    if spec.get("checkpoint"):
        return load(spec["checkpoint"])
    if "seed" in spec:
        return random(spec.get("random"), int(spec["seed"]))
    raise ValueError(f"{what} spec {dict(spec)!r} names neither a checkpoint nor a random config and seed")
