"""The embedded offline demo corpus: synthetic sound scenes with Clotho-style captions.

Each clip is a small scene of 1-3 *events* drawn from ten acoustically distinct kinds, each
kind owning its own frequency band and/or temporal pattern so that it stays separable in a
log-mel spectrogram (the demo's encoder is a randomly initialised BEATs, whose features keep
little more than spectro-temporal energy):

=========  ======================================  =========================================
kind       sound                                   band / pattern
=========  ======================================  =========================================
beep       steady sine 2.8-3.2 kHz                 one narrow high line, steady
hum        sine 95-125 Hz + 2nd/3rd harmonic       narrow low lines, steady
siren      sine swept 0.5-1.5 kHz, ~1 Hz wail      mid line moving up and down
rain       white noise high-passed at 1.5 kHz      broadband high, flickering
rumble     white noise low-passed at 200 Hz        broadband low, slow swell
clock      8 ms clicks (2-4 kHz) at ~2 per second  sparse high-mid impulses
clicking   5 ms clicks (0.8-1.6 kHz) at 10-14 /s   dense mid impulses
knock      2-4 damped 170-220 Hz thuds (counted)   low impulses, countable
chirp      60 ms up-sweeps 3-5 kHz in bursts       high short glides
bark       1-3 harmonic bursts, f0 ~500 Hz falling mid harmonic stacks, countable
=========  ======================================  =========================================

Scenes (*layouts*): one event; two in sequence ("then", "followed by"); one over a steady
background ("while", "as", "in the background"); three in sequence; two in sequence over a
background. Loudness is an absolute level (quiet / normal / loud peak amplitude), so clips are
*not* peak-normalised to a fixed level: they are only scaled down when a sum would exceed 0.95,
and a -60 dBFS noise floor keeps every clip from being digitally silent. Five reference captions
per clip come from varied templates and phrase synonyms but state the same facts (kinds, order,
overlap, counts, loudness) with a vocabulary of under 200 words.

Everything is seeded per clip from ``SeedSequence(seed, spawn_key=(0, i))``, so the output is
byte-identical for a seed, and clip *i* does not depend on ``n_clips``. Splits are assigned at
random (seeded) but stratified by layout, so every split has the same mix of scene types.

Output is exactly the ``folder`` corpus layout (see :mod:`clapart_core.corpus.sources`):
``root/audio/{split}/demo_NNNNN.wav`` (16-bit PCM), ``root/{train,val,test}.csv`` with columns
``file_name, caption_1..caption_5``, plus ``root/scenes.json`` with the ground-truth events.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfilt

from clapart_core.pipeline.params import SPLITS

__all__ = [
    "BACKGROUND_KINDS",
    "COUNTED_KINDS",
    "DEMO_MARKER",
    "KINDS",
    "LAYOUTS",
    "LEVELS",
    "DemoClip",
    "DemoEvent",
    "caption_vocabulary",
    "demo_scenes",
    "draw_scene",
    "generate_demo_corpus",
    "read_scenes",
    "synthesize_clip",
]

KINDS: tuple[str, ...] = (
    "beep", "hum", "siren", "rain", "rumble", "clock", "clicking", "knock", "chirp", "bark",
)
# Kinds that can run steadily under other events for a whole clip.
BACKGROUND_KINDS: tuple[str, ...] = ("hum", "siren", "rain", "rumble", "clock")
# Kinds made of a countable number of discrete sounds, with the allowed counts.
COUNTED_KINDS: dict[str, tuple[int, ...]] = {"knock": (2, 3, 4), "bark": (1, 2, 3)}
# Peak amplitude of one event at each loudness: ~19 dB between quiet and loud.
LEVELS: dict[str, float] = {"quiet": 0.07, "normal": 0.22, "loud": 0.6}
LAYOUTS: tuple[str, ...] = ("single", "sequence", "overlap", "sequence3", "sequence_over")
_LAYOUT_P = np.array([0.2, 0.3, 0.2, 0.15, 0.15])

DEMO_MARKER = ".clapart_demo"
_NOISE_FLOOR_RMS = 0.001  # -60 dBFS: audible in features, never masks an event
_MAX_PEAK = 0.95
_TARGET_PEAK = 0.9
_EDGE_S = 0.15  # silence-ish margin at clip start/end for foreground events
_GAP_S = 0.2  # minimum gap between sequential events, so "then" is audible

# Duration of one countable sound, and the range of onset spacing between sounds (s).
_COUNTED_SOUND_S = {"knock": 0.1, "bark": 0.22}
_COUNTED_SPACING_S = {"knock": (0.22, 0.32), "bark": (0.33, 0.42)}


@dataclass(frozen=True)
class DemoEvent:
    """One sound event in a demo clip.

    Attributes:
        kind: one of :data:`KINDS`.
        start_s, end_s: onset and offset in seconds from the clip start.
        loudness: ``"quiet"``, ``"normal"`` or ``"loud"`` (peak amplitude :data:`LEVELS`).
        count: number of discrete sounds for :data:`COUNTED_KINDS`, else ``None``.
        background: True for a steady sound spanning the clip under the foreground events.
        freq_hz: the kind's characteristic frequency for this event (beep/hum/bark/knock
            fundamental, siren centre, click rate for clock/clicking), else ``None``.
    """

    kind: str
    start_s: float
    end_s: float
    loudness: str
    count: int | None
    background: bool
    freq_hz: float | None


@dataclass(frozen=True)
class DemoClip:
    """One demo clip: where it lives, which scene it shows, and its five references.

    ``events`` lists the foreground events in temporal order, then the background (if any).
    """

    index: int
    name: str
    split: str
    layout: str
    events: tuple[DemoEvent, ...]
    captions: tuple[str, ...]

    @property
    def file_name(self) -> str:
        """Path of the wav relative to the corpus root, ``/``-separated."""
        return f"audio/{self.split}/{self.name}.wav"


# --------------------------------------------------------------------------------------------
# Caption grammar. Placeholders: {L} loudness adjective + space (or ""), {A} loudness adverb +
# space, {N} count word, {T} count adverb ("twice"), {B} "bark"/"barks". "a" before a vowel is
# fixed up to "an" after substitution.

_NP: dict[str, tuple[str, ...]] = {
    "beep": ("a {L}high beep", "a {L}high-pitched beep", "a {L}high tone", "a {L}shrill beep"),
    "hum": ("a {L}low hum", "a {L}deep hum", "a {L}low-pitched hum", "a {L}low electrical hum"),
    "siren": ("a {L}siren", "a {L}wailing siren", "a {L}emergency siren"),
    "rain": ("{L}rain", "{L}falling rain", "the sound of {L}rain"),
    "rumble": ("a {L}low rumble", "a {L}deep rumble", "a {L}rumbling noise"),
    "clock": ("a {L}ticking clock", "a {L}clock ticking", "the {L}ticking of a clock"),
    "clicking": ("{L}rapid clicking", "{L}fast clicking", "a {L}rapid clicking sound"),
    "knock": ("{N} {L}knocks", "{N} {L}knocks on a door", "{N} {L}knocks on wood"),
    "chirp": ("a {L}bird chirping", "a {L}bird singing", "{L}chirping from a bird"),
    "bark": ("{N} {L}dog {B}", "a {L}dog barking {T}", "a dog barking {A}{T}"),
}
_CLAUSE: dict[str, tuple[str, ...]] = {
    "beep": ("a {L}high beep sounds", "a {L}high-pitched tone rings out", "a {L}high beep plays"),
    "hum": ("a {L}low hum drones", "a {L}deep hum drones on", "a {L}low-pitched hum sounds"),
    "siren": ("a {L}siren wails", "a {L}siren blares", "a {L}emergency siren sounds"),
    "rain": ("{L}rain falls", "{L}rain pours down", "{L}rain patters"),
    "rumble": ("a {L}low rumble rolls on", "a {L}deep rumble sounds", "a {L}rumbling noise goes on"),
    "clock": ("a {L}clock ticks", "a {L}clock ticks steadily", "a {L}clock is ticking"),
    "clicking": ("{L}rapid clicking goes on", "{L}clicks repeat rapidly",
                 "a {L}clicking sound repeats quickly"),
    "knock": ("someone knocks {A}{T}", "{N} {L}knocks are heard", "someone knocks on a door {A}{T}"),
    "chirp": ("a {L}bird chirps", "a {L}bird sings", "a {L}bird is chirping"),
    "bark": ("a {L}dog barks {T}", "a dog barks {A}{T}", "a {L}dog is barking {T}"),
}
_ADJ = {"quiet": ("quiet", "faint", "soft"), "normal": ("",), "loud": ("loud",)}
_ADV = {"quiet": ("quietly", "softly"), "normal": ("",), "loud": ("loudly",)}
_COUNT_WORD = {1: "a single", 2: "two", 3: "three", 4: "four"}
_COUNT_ADV = {1: "once", 2: "twice", 3: "three times", 4: "four times"}

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "single": ("{C1}", "{N1} can be heard", "a recording of {N1}", "you can hear {N1}", "{N1}"),
    "sequence": (
        "{C1}, then {C2}", "{C1} and then {C2}", "{N1} followed by {N2}",
        "first {C1}, then {C2}", "{C1}, followed by {N2}", "{C2} after {N1}",
        "{N1} and then {N2}",
    ),
    "overlap": (
        "{C1} while {CB}", "{C1} as {CB}", "{N1} with {NB} in the background",
        "{CB} while {C1}", "{N1} over {NB}", "{CB} as {C1}",
    ),
    "sequence3": (
        "{C1}, then {C2}, then {C3}", "{N1}, then {N2}, then {N3}",
        "{N1} followed by {N2} and then {N3}", "first {C1}, then {C2}, and finally {C3}",
        "{C1}, {C2} and then {C3}",
    ),
    "sequence_over": (
        "{C1}, then {C2}, while {CB}", "{N1} followed by {N2} with {NB} in the background",
        "{CB} as {C1} and then {C2}", "over {NB}, {C1} and then {C2}",
        "{N1} and then {N2} over {NB}",
    ),
}
_N_CAPTIONS = 5


def _fill(template: str, event: DemoEvent, rng: np.random.Generator) -> str:
    """Substitute one event's loudness/count words into a phrase template."""
    adj = str(rng.choice(_ADJ[event.loudness]))
    adv = str(rng.choice(_ADV[event.loudness]))
    count = event.count if event.count is not None else 1
    text = template.format(
        L=f"{adj} " if adj else "",
        A=f"{adv} " if adv else "",
        N=_COUNT_WORD[count],
        T=_COUNT_ADV[count],
        B="bark" if count == 1 else "barks",
    )
    return text.strip()


def _finish(text: str) -> str:
    """Fix articles, spacing and punctuation; capitalise like a Clotho caption."""
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)
    text = re.sub(r"\s+", " ", text).strip().replace(" ,", ",")
    return text[0].upper() + text[1:] + "."


def _captions(layout: str, events: tuple[DemoEvent, ...], rng: np.random.Generator) -> tuple[str, ...]:
    """Five distinct references for one scene, each from a different template when possible."""
    fg = [e for e in events if not e.background]
    bg = [e for e in events if e.background]
    templates = _TEMPLATES[layout]
    order = rng.permutation(len(templates))
    out: list[str] = []
    attempt = 0
    # Phrase choices are random, so two captions can coincide; redraw (bounded, seeded).
    while len(out) < _N_CAPTIONS and attempt < 50:
        tpl = templates[int(order[attempt % len(order)])]
        slots: dict[str, str] = {}
        for i, ev in enumerate(fg, start=1):
            slots[f"N{i}"] = _fill(str(rng.choice(_NP[ev.kind])), ev, rng)
            slots[f"C{i}"] = _fill(str(rng.choice(_CLAUSE[ev.kind])), ev, rng)
        for ev in bg:
            slots["NB"] = _fill(str(rng.choice(_NP[ev.kind])), ev, rng)
            slots["CB"] = _fill(str(rng.choice(_CLAUSE[ev.kind])), ev, rng)
        caption = _finish(tpl.format(**slots))
        if caption not in out:
            out.append(caption)
        attempt += 1
    if len(out) < _N_CAPTIONS:  # pragma: no cover - the grammar has far more variants than 5
        raise RuntimeError(f"could not draw {_N_CAPTIONS} distinct captions for layout {layout}")
    return tuple(out)


def caption_vocabulary() -> set[str]:
    """Every lower-cased word the caption grammar can produce (for vocabulary-size checks)."""
    words: set[str] = set()
    texts = [t for v in _NP.values() for t in v] + [t for v in _CLAUSE.values() for t in v]
    texts += [t for v in _TEMPLATES.values() for t in v]
    texts += [w for v in _ADJ.values() for w in v] + [w for v in _ADV.values() for w in v]
    texts += list(_COUNT_WORD.values()) + list(_COUNT_ADV.values()) + ["bark", "barks", "an"]
    for text in texts:
        words.update(re.findall(r"[a-z][a-z\-]*", re.sub(r"\{[A-Z0-9]+\}", " ", text).lower()))
    return words


# --------------------------------------------------------------------------------------------
# Scene sampling.


def _pick_level(rng: np.random.Generator, allow_quiet: bool) -> str:
    if allow_quiet:
        return str(rng.choice(["quiet", "normal", "loud"], p=[0.25, 0.5, 0.25]))
    return str(rng.choice(["normal", "loud"], p=[0.65, 0.35]))


def _fg_event(
    kind: str, slot: tuple[float, float], rng: np.random.Generator, allow_quiet: bool
) -> DemoEvent:
    """A foreground event placed inside ``slot = (t0, t1)`` seconds."""
    t0, t1 = slot
    width = t1 - t0
    count: int | None = None
    if kind in COUNTED_KINDS:
        count = int(rng.choice(COUNTED_KINDS[kind]))
        lo, hi = _COUNTED_SPACING_S[kind]
        spacing = float(rng.uniform(lo, hi))
        dur = (count - 1) * spacing + _COUNTED_SOUND_S[kind]
        dur = min(dur, width)
    else:
        dur = float(rng.uniform(0.6, 0.95)) * width
    start = t0 + float(rng.uniform(0.0, max(width - dur, 0.0)))
    freq = _draw_freq(kind, rng)
    return DemoEvent(
        kind=kind,
        start_s=round(start, 3),
        end_s=round(start + dur, 3),
        loudness=_pick_level(rng, allow_quiet),
        count=count,
        background=False,
        freq_hz=freq,
    )


def _draw_freq(kind: str, rng: np.random.Generator) -> float | None:
    """Per-event characteristic frequency (Hz; click rate for clock/clicking)."""
    ranges = {
        "beep": (2800.0, 3200.0), "hum": (95.0, 125.0), "siren": (900.0, 1100.0),
        "knock": (170.0, 220.0), "bark": (450.0, 550.0), "clock": (1.8, 2.2),
        "clicking": (10.0, 14.0),
    }
    if kind not in ranges:
        return None
    lo, hi = ranges[kind]
    return round(float(rng.uniform(lo, hi)), 2)


def _sequence_slots(n: int, t0: float, t1: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Split ``[t0, t1]`` into ``n`` consecutive slots separated by ``_GAP_S``, jittered."""
    width = (t1 - t0 - (n - 1) * _GAP_S) / n
    jitter = 0.15 * width
    bounds = [t0]
    for k in range(1, n):
        bounds.append(t0 + k * (width + _GAP_S) - _GAP_S / 2 + float(rng.uniform(-jitter, jitter)))
    bounds.append(t1)
    slots = []
    for k in range(n):
        a = bounds[k] + (_GAP_S / 2 if k > 0 else 0.0)
        b = bounds[k + 1] - (_GAP_S / 2 if k < n - 1 else 0.0)
        slots.append((a, b))
    return slots


def _scene(clip_seconds: float, rng: np.random.Generator, layout_p: np.ndarray = _LAYOUT_P) -> tuple[str, tuple[DemoEvent, ...]]:
    """Draw a layout (probabilities ``layout_p`` over :data:`LAYOUTS`) and its events (foreground in time order, then background)."""
    layout = str(rng.choice(LAYOUTS, p=layout_p))
    t0, t1 = _EDGE_S, clip_seconds - _EDGE_S
    n_fg = {"single": 1, "sequence": 2, "overlap": 1, "sequence3": 3, "sequence_over": 2}[layout]
    has_bg = layout in ("overlap", "sequence_over")
    bg_kind = str(rng.choice(BACKGROUND_KINDS)) if has_bg else None
    pool = [k for k in KINDS if k != bg_kind]
    fg_kinds = [str(k) for k in rng.choice(pool, size=n_fg, replace=False)]
    events: list[DemoEvent] = []
    bg_event: DemoEvent | None = None
    if bg_kind is not None:
        # Backgrounds are never loud (they would mask the foreground); a quiet foreground is
        # allowed only over a quiet background so that it stays audible.
        bg_level = str(rng.choice(["quiet", "normal"]))
        bg_event = DemoEvent(bg_kind, 0.0, round(clip_seconds, 3), bg_level, None, True,
                             _draw_freq(bg_kind, rng))
    allow_quiet = bg_event is None or bg_event.loudness == "quiet"
    if layout == "overlap":
        # Foreground sits in the middle so the background is heard alone before and after.
        slot = (0.2 * clip_seconds, 0.85 * clip_seconds)
        events.append(_fg_event(fg_kinds[0], slot, rng, allow_quiet))
    else:
        for kind, slot in zip(fg_kinds, _sequence_slots(n_fg, t0, t1, rng), strict=True):
            events.append(_fg_event(kind, slot, rng, allow_quiet))
    if bg_event is not None:
        events.append(bg_event)
    return layout, tuple(events)


def _assign_splits(layouts: list[str], splits: tuple[float, float, float], seed: int) -> list[str]:
    """Seeded random split per clip, stratified by layout.

    Clips are shuffled within each layout group and the groups concatenated; walking that
    order, each clip goes to the split furthest below its target share so far, so every
    layout is divided in the requested proportions (to within one clip).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    order: list[int] = []
    for layout in LAYOUTS:
        members = [i for i, name in enumerate(layouts) if name == layout]
        order.extend(int(members[j]) for j in rng.permutation(len(members)))
    fracs = np.asarray(splits, dtype=np.float64)
    counts = np.zeros(3)
    out = [""] * len(layouts)
    for pos, idx in enumerate(order):
        deficit = fracs * (pos + 1) - counts
        k = int(np.argmax(deficit))  # ties -> earliest split: deterministic
        counts[k] += 1
        out[idx] = SPLITS[k]
    return out


def draw_scene(
    index: int, clip_seconds: float, seed: int, layout_p: np.ndarray = _LAYOUT_P
) -> tuple[str, tuple[DemoEvent, ...], tuple[str, ...]]:
    """Layout, events and five captions of clip ``index`` in a clip of ``clip_seconds`` seconds.

    What :func:`demo_scenes` draws per clip, for callers that choose each clip's duration and
    split themselves (the rehearsal corpora, :mod:`clapart_core.corpus.rehearsal`). Seeded from
    ``SeedSequence(seed, spawn_key=(0, index))`` only, like :func:`synthesize_clip`.
    """
    if clip_seconds < 3.0:
        raise ValueError(f"clip_seconds must be >= 3.0 to fit three events, got {clip_seconds}")
    scene_ss, _synth_ss, caption_ss = np.random.SeedSequence(seed, spawn_key=(0, index)).spawn(3)
    layout, events = _scene(clip_seconds, np.random.default_rng(scene_ss), layout_p)
    return layout, events, _captions(layout, events, np.random.default_rng(caption_ss))


def _layout_probabilities(weights: dict[str, float] | None) -> np.ndarray:
    """``{layout: weight}`` -> probabilities over :data:`LAYOUTS` (None: the default mix)."""
    if weights is None:
        return _LAYOUT_P
    unknown = sorted(set(weights) - set(LAYOUTS))
    if unknown:
        raise ValueError(f"unknown layout {unknown[0]!r}; choose among {', '.join(LAYOUTS)}")
    w = np.array([float(weights.get(name, 0.0)) for name in LAYOUTS])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"layout weights must be >= 0 with a positive sum, got {weights}")
    return w / w.sum()


def demo_scenes(
    n_clips: int = 400,
    clip_seconds: float = 4.0,
    seed: int = 1115,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    layout_weights: dict[str, float] | None = None,
) -> list[DemoClip]:
    """The scene descriptions (no audio) that :func:`generate_demo_corpus` renders.

    ``layout_weights`` (layout name -> relative weight, the others 0; None = the default mix)
    draws another mix of scenes: e.g. only ``sequence3`` and ``sequence_over`` for a corpus of
    busier clips (a second corpus for the codebooks, params ``codebook_corpus``).

    Returns:
        ``n_clips`` :class:`DemoClip` in index order, each with its split, events and captions.
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    if clip_seconds < 3.0:
        raise ValueError(f"clip_seconds must be >= 3.0 to fit three events, got {clip_seconds}")
    if len(splits) != 3 or min(splits) <= 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise ValueError(f"splits must be three positive fractions summing to 1, got {splits}")
    if n_clips * min(splits) < 1:
        raise ValueError(f"n_clips={n_clips} is too few to give every split a clip with {splits}")
    layout_p = _layout_probabilities(layout_weights)
    drafts = [draw_scene(i, clip_seconds, seed, layout_p) for i in range(n_clips)]
    split_of = _assign_splits([d[0] for d in drafts], tuple(splits), seed)
    return [
        DemoClip(index=i, name=f"demo_{i:05d}", split=split_of[i], layout=layout,
                 events=events, captions=captions)
        for i, (layout, events, captions) in enumerate(drafts)
    ]


# --------------------------------------------------------------------------------------------
# Synthesis. Every generator returns float64 [n] with peak 1 (before the level is applied).


def _fade(x: np.ndarray, sr: int, seconds: float) -> np.ndarray:
    """Raised-cosine fade in/out, so steady sounds do not start with a broadband click."""
    n = min(int(seconds * sr), len(x) // 2)
    if n > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float | None, hi: float | None) -> np.ndarray:
    """White noise filtered to ``[lo, hi]`` Hz with a 4th-order Butterworth (None = open)."""
    x = rng.standard_normal(n)
    if lo is not None and hi is not None:
        sos = butter(4, [lo, hi], btype="bandpass", fs=sr, output="sos")
    elif lo is not None:
        sos = butter(4, lo, btype="highpass", fs=sr, output="sos")
    elif hi is not None:
        sos = butter(4, hi, btype="lowpass", fs=sr, output="sos")
    else:
        return x
    return sosfilt(sos, x)


def _impulses(
    rng: np.random.Generator, n: int, sr: int, rate_hz: float, click_s: float, band: tuple[float, float],
    alternate: bool,
) -> np.ndarray:
    """A regular train of short band-limited noise clicks at ``rate_hz`` (ticking, clicking)."""
    x = np.zeros(n)
    click_n = max(int(click_s * sr), 8)
    period = sr / rate_hz
    # One filtered noise stream, cut into bursts: one filter run instead of one per click.
    source = _band_noise(rng, n + click_n, sr, band[0], band[1])
    decay = np.exp(-np.arange(click_n) / (click_n / 4))
    onset = float(rng.uniform(0.0, 0.3 * period))
    k = 0
    while int(onset) + click_n <= n:
        burst = source[int(onset) : int(onset) + click_n] * decay
        # tick-tock: every other click is a little quieter, like a mechanical clock
        gain = 0.6 if alternate and k % 2 else 1.0
        x[int(onset) : int(onset) + click_n] += gain * burst / (np.abs(burst).max() + 1e-12)
        onset += period
        k += 1
    return x


def _synth_event(ev: DemoEvent, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Render one event to ``n`` samples at ``sr`` Hz, peak-normalised to 1."""
    t = np.arange(n) / sr
    f = ev.freq_hz
    if ev.kind == "beep":
        x = _fade(np.sin(2 * np.pi * f * t), sr, 0.01)
    elif ev.kind == "hum":
        x = sum(a * np.sin(2 * np.pi * h * f * t + rng.uniform(0, 2 * np.pi))
                for h, a in ((1, 1.0), (2, 0.5), (3, 0.25)))
        x = _fade(x, sr, 0.05)
    elif ev.kind == "siren":
        rate = float(rng.uniform(0.8, 1.2))
        inst = f + 400.0 * np.sin(2 * np.pi * rate * t - np.pi / 2)
        phase = 2 * np.pi * np.cumsum(inst) / sr
        x = _fade(np.sin(phase) + 0.3 * np.sin(2 * phase), sr, 0.03)
    elif ev.kind == "rain":
        flutter = 0.7 + 0.3 * np.abs(_band_noise(rng, n, sr, None, 20.0)) / 0.1
        x = _fade(_band_noise(rng, n, sr, 1500.0, None) * np.clip(flutter, 0.4, 1.6), sr, 0.05)
    elif ev.kind == "rumble":
        swell = 0.75 + 0.25 * np.sin(2 * np.pi * float(rng.uniform(0.4, 0.8)) * t + rng.uniform(0, 6.28))
        x = _fade(_band_noise(rng, n, sr, None, 200.0) * swell, sr, 0.1)
    elif ev.kind == "clock":
        x = _impulses(rng, n, sr, f, 0.008, (2000.0, 4000.0), alternate=True)
    elif ev.kind == "clicking":
        x = _impulses(rng, n, sr, f, 0.005, (800.0, 1600.0), alternate=False)
    elif ev.kind == "knock":
        x = _counted(ev, n, sr, rng, _knock)
    elif ev.kind == "bark":
        x = _counted(ev, n, sr, rng, _bark)
    elif ev.kind == "chirp":
        x = _chirps(n, sr, rng)
    else:  # pragma: no cover - kinds are validated by construction
        raise ValueError(f"unknown demo event kind {ev.kind!r}")
    return x / (np.abs(x).max() + 1e-12)


def _knock(f0: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One knock: a damped low resonance plus a short low-passed thump (0.1 s)."""
    n = int(_COUNTED_SOUND_S["knock"] * sr)
    t = np.arange(n) / sr
    body = np.sin(2 * np.pi * f0 * t) * np.exp(-t / 0.025)
    thump = _band_noise(rng, n, sr, None, 500.0) * np.exp(-t / 0.01)
    return body + 0.5 * thump / (np.abs(thump).max() + 1e-12)


def _bark(f0: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One bark: a harmonic stack with falling pitch and a noisy component (0.22 s)."""
    n = int(_COUNTED_SOUND_S["bark"] * sr)
    t = np.arange(n) / sr
    inst = f0 * (1.0 - 0.3 * t / t[-1])
    phase = 2 * np.pi * np.cumsum(inst) / sr
    stack = sum(np.sin(h * phase) / h for h in range(1, 9) if h * f0 < 0.45 * sr)
    env = np.minimum(t / 0.01, 1.0) * np.exp(-t / 0.08)
    noise = _band_noise(rng, n, sr, 500.0, 2000.0)
    return env * (stack + 0.3 * noise / (np.abs(noise).max() + 1e-12))


def _counted(
    ev: DemoEvent, n: int, sr: int, rng: np.random.Generator,
    sound: Callable[[float, int, np.random.Generator], np.ndarray],
) -> np.ndarray:
    """Place ``ev.count`` copies of ``sound`` evenly over ``n`` samples (first at 0, last at end)."""
    if ev.count is None or ev.freq_hz is None:
        raise ValueError(f"counted event {ev.kind!r} needs count and freq_hz")
    x = np.zeros(n)
    one_n = int(_COUNTED_SOUND_S[ev.kind] * sr)
    step = (n - one_n) / (ev.count - 1) if ev.count > 1 else 0.0
    for k in range(ev.count):
        s = sound(ev.freq_hz * float(rng.uniform(0.97, 1.03)), sr, rng)
        at = int(round(k * step))
        m = min(len(s), n - at)
        x[at : at + m] += s[:m]
    return x


def _chirps(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Bird song: 60 ms rising glides 3 -> 5 kHz, separated by 60-150 ms gaps."""
    x = np.zeros(n)
    at = int(rng.uniform(0.0, 0.05) * sr)
    while True:
        m = int(float(rng.uniform(0.05, 0.07)) * sr)
        if at + m > n:
            break
        t = np.arange(m) / sr
        f_lo = float(rng.uniform(2900.0, 3300.0))
        inst = f_lo + (f_lo + 1800.0 - f_lo) * t / t[-1]
        glide = np.sin(2 * np.pi * np.cumsum(inst) / sr) * np.sin(np.pi * t / t[-1])
        x[at : at + m] += glide
        at += m + int(float(rng.uniform(0.06, 0.15)) * sr)
    return x


def synthesize_clip(clip: DemoClip, clip_seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """Render a clip's events to audio.

    Returns:
        float64 ``[round(clip_seconds * sample_rate)]`` in (-0.95, 0.95): events at their
        absolute :data:`LEVELS`, over a -60 dBFS white noise floor, scaled down to 0.9 peak
        only if the mix would exceed 0.95 (so loudness words stay meaningful).
    """
    if sample_rate < 16000:
        raise ValueError(f"sample_rate must be >= 16000 (chirps reach 5 kHz), got {sample_rate}")
    _scene_ss, synth_ss, _caption_ss = np.random.SeedSequence(seed, spawn_key=(0, clip.index)).spawn(3)
    rng = np.random.default_rng(synth_ss)
    total = int(round(clip_seconds * sample_rate))
    mix = _NOISE_FLOOR_RMS * rng.standard_normal(total)
    for ev in clip.events:
        a = int(round(ev.start_s * sample_rate))
        b = min(int(round(ev.end_s * sample_rate)), total)
        mix[a:b] += LEVELS[ev.loudness] * _synth_event(ev, b - a, sample_rate, rng)
    peak = float(np.abs(mix).max())
    if peak > _MAX_PEAK:
        mix *= _TARGET_PEAK / peak
    return mix


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Quantise [-1, 1] float to int16 ourselves (round-half-even), independent of libsndfile."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def prepare_generated_root(root: Path, marker: str, maker: str, generated: Sequence[str]) -> None:
    """Make ``root`` ready for a fresh generated corpus, deleting only ``generated`` (files or
    folders under ``root``) and only if ``marker`` says an earlier run of ``maker`` wrote them.

    Raises:
        FileExistsError: ``root`` is a non-empty folder without the marker (someone else's data).
    """
    if root.exists() and any(root.iterdir()):
        if not (root / marker).exists():
            raise FileExistsError(f"{root}: refusing to write a generated corpus into a non-empty folder that was not made by {maker} (no {marker} marker)")
        for name in generated:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    # Written first: a crash mid-generation still leaves the folder recognisably ours.
    (root / marker).write_text(f"generated by {maker}\n", encoding="utf-8")


def generate_demo_corpus(
    root: Path,
    n_clips: int = 400,
    clip_seconds: float = 4.0,
    sample_rate: int = 16000,
    seed: int = 1115,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    layout_weights: dict[str, float] | None = None,
) -> None:
    """Write the demo corpus in the ``folder`` layout under ``root`` (deterministic per seed).

    Writes ``root/audio/{train,val,test}/demo_NNNNN.wav`` (mono 16-bit PCM at ``sample_rate``,
    ``clip_seconds`` long), ``root/{train,val,test}.csv`` (``file_name, caption_1..caption_5``)
    and ``root/scenes.json`` (ground-truth events per clip, see :func:`read_scenes`).
    A previous demo corpus in ``root`` is replaced; any other non-empty folder is refused.
    """
    import soundfile as sf  # local: keeps scene-only use (demo_scenes) free of libsndfile

    root = Path(root)
    clips = demo_scenes(n_clips, clip_seconds, seed, tuple(splits), layout_weights)
    prepare_generated_root(root, DEMO_MARKER, "generate_demo_corpus", ["audio", *(f"{s}.csv" for s in SPLITS), "scenes.json"])
    for split in SPLITS:
        (root / "audio" / split).mkdir(parents=True, exist_ok=True)
    for clip in clips:
        wave = synthesize_clip(clip, clip_seconds, sample_rate, seed)
        sf.write(str(root / clip.file_name), to_pcm16(wave), sample_rate, subtype="PCM_16", format="WAV")
    for split in SPLITS:
        with open(root / f"{split}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, _N_CAPTIONS + 1)])
            for clip in clips:
                if clip.split == split:
                    writer.writerow([clip.file_name, *clip.captions])
    scenes = {
        "seed": seed, "clip_seconds": clip_seconds, "sample_rate": sample_rate,
        "clips": [asdict(c) | {"file_name": c.file_name} for c in clips],
    }
    (root / "scenes.json").write_text(json.dumps(scenes, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_scenes(root: Path) -> list[DemoClip]:
    """Load the ground-truth scenes written by :func:`generate_demo_corpus` from ``root/scenes.json``."""
    path = Path(root) / "scenes.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no demo scene file (not a demo corpus root?)")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        DemoClip(
            index=c["index"], name=c["name"], split=c["split"], layout=c["layout"],
            events=tuple(DemoEvent(**e) for e in c["events"]), captions=tuple(c["captions"]),
        )
        for c in data["clips"]
    ]
