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

#: the largest seeded random model any spec may ask for: 1e9 parameters (4 GB in float32). The
#: published models are far below it (BEATs 90 M, CLAP HTS-AT fused 150 M, EnCodec 24 kHz 15 M), and
#: a spec is data (a model directory's frontend.json): its sizes are checked before anything is
#: allocated, not trusted.
MAX_RANDOM_PARAMETERS = 1_000_000_000

Model = TypeVar("Model")


class ModelNotFoundError(UserError, RuntimeError):
    """A named pretrained model is not available (offline or wrong path)."""


def parameters_on_meta(build: Callable[[], Any]) -> int:
    """Parameters of the ``torch.nn.Module`` that ``build()`` constructs, counted on the meta
    device: shapes only, no memory is allocated, however large the sizes."""
    import torch

    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def checkpoint_or_random(
    spec: Mapping[str, Any],
    load: Callable[[str], Model],
    random: Callable[[Any, int], Model],
    what: str,
    count: Callable[[Any], int] | None = None,
) -> Model:
    """The encoder a spec names: ``load(spec["checkpoint"])`` when it names a checkpoint, else the
    seeded random model ``random(spec["random"], spec["seed"])`` (no ``random`` key: the defaults).

    ``count``: the random model's parameter count for the same overrides, computed without
    allocating (:func:`parameters_on_meta`); when given, a model above
    :data:`MAX_RANDOM_PARAMETERS` is refused before it is built.

    Raises:
        ValueError: the spec names neither a checkpoint nor a seed (``what`` names the encoder),
            or its random sizes are unknown keys or too large.
    """
    if spec.get("checkpoint"):
        return load(spec["checkpoint"])
    if "seed" in spec:
        if count is not None:
            check_random_size(what, spec.get("random"), count)
        return random(spec.get("random"), int(spec["seed"]))
    raise ValueError(f"{what} spec {dict(spec)!r} names neither a checkpoint nor a random config and seed")


def check_random_size(what: str, overrides: Any, count: Callable[[Any], int]) -> int:
    """The parameter count of a random model's ``overrides``; ValueError (one sentence) when the
    overrides cannot describe a model or it would exceed :data:`MAX_RANDOM_PARAMETERS`."""
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(f"the random {what} config must be a mapping of sizes, got {overrides!r}")
    try:
        n = count(overrides)
    except ValueError as err:  # unknown keys, inconsistent sizes: the config's own sentence
        raise ValueError(f"the random {what} config is refused: {err}") from None
    except (TypeError, RuntimeError, KeyError, AttributeError) as err:  # e.g. a negative or non-integer size
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"the random {what} config {dict(overrides or {})!r} does not describe a model ({first})") from None
    if n > MAX_RANDOM_PARAMETERS:
        raise ValueError(
            f"the random {what} config {dict(overrides or {})!r} has {n:,} parameters, more than the "
            f"{MAX_RANDOM_PARAMETERS:,} any random model may have ({4 * n / 2**30:.0f} GiB in float32); refused before allocating"
        )
    return n
