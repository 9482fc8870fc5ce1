"""One-sentence errors (clapart_core/pipeline/errors.py): what counts as a user's mistake, the one
line `error: <what> (<where>)` with exit code 2, and a full or read-only disk under configure and
tokenize (as root, chmod does not stop writes, so the disk errors are raised by monkeypatching)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import h5py
import pyarrow.parquet as pq
import pytest
import yaml

from clapart_core.corpus.audio import AudioDecodeError
from clapart_core.corpus.manifest import ManifestError
from clapart_core.encoders.spec import ModelNotFoundError
from clapart_core.pipeline.checkpoints import CheckpointError
from clapart_core.pipeline.config import write_configs
from clapart_core.pipeline.errors import MissingInputError, ParamsError, UserError, describe, user_errors
from clapart_core.pipeline.params import run_stage

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_what_counts_as_a_users_mistake(tmp_path):
    for err in (ManifestError("m"), CheckpointError("c"), ModelNotFoundError("n"), AudioDecodeError("a.wav", "empty", "0 bytes"), ParamsError("p")):
        assert isinstance(err, UserError) and describe(err) is not None
    assert describe(OSError(errno.ENOSPC, "No space left on device", "data/x.h5")) == (
        "data/x.h5: no space left on device; free some space or move data/ to a larger disk"
    )
    assert describe(OSError(errno.EROFS, "Read-only file system", "data/config/a.json")).startswith("data/config/a.json: read-only file system; ")
    assert describe(PermissionError(errno.EACCES, "Permission denied", "data")) == "data: permission denied"
    # h5py and pyarrow keep the number only in their text
    h5 = OSError("Unable to synchronously create file (unable to open file: name = 'a.h5', errno = 30, error message = 'Read-only file system')")
    assert describe(h5).startswith("Unable to synchronously create file") and "run from a writable copy" in describe(h5)
    assert describe(OSError("IOError: No space left on device")) is not None
    with pytest.raises(OSError) as missing_h5:
        h5py.File(tmp_path / "none.h5", "r")
    assert f"name = '{tmp_path / 'none.h5'}'" in describe(missing_h5.value)  # its own words, case kept
    with pytest.raises(OSError) as missing_parquet:  # pyarrow: FileNotFoundError without a number
        pq.read_table(tmp_path / "none.parquet")
    assert describe(missing_parquet.value) == f"{tmp_path / 'none.parquet'}: no such file or directory"
    # a bug keeps its traceback
    for bug in (KeyError("x"), ValueError("v"), TypeError("t"), OSError(errno.EBADF, "Bad file descriptor")):
        assert describe(bug) is None
    assert "\n" not in describe(ManifestError("a\nb"))


def test_user_errors_prints_one_line_and_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("CLAPART_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_, user_errors("stage decode", debug=False):
        raise MissingInputError("data/config/decode.json is missing: run the configure stage first")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: data/config/decode.json is missing: run the configure stage first (stage decode)\n"
    with pytest.raises(KeyError), user_errors("stage decode", debug=False):  # a bug: unchanged
        raise KeyError("x")
    with pytest.raises(ManifestError), user_errors("stage decode", debug=True):  # --debug: the traceback
        raise ManifestError("m")
    monkeypatch.setenv("CLAPART_DEBUG", "1")
    with pytest.raises(ManifestError), user_errors("stage decode"):
        raise ManifestError("m")


def _run(name: str, project: Path, capsys: pytest.CaptureFixture[str], argv: list[str] | None = None) -> tuple[int, list[str]]:
    """Run stage ``name`` in ``project`` (in this process): (exit code, stderr lines)."""
    import importlib

    main = importlib.import_module(f"stages.{name}").main
    capsys.readouterr()
    cwd = Path.cwd()
    os.chdir(project)
    try:
        run_stage(name, main, argv=argv or [])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        os.chdir(cwd)
    return code, [line for line in capsys.readouterr().err.splitlines() if not line[:2].isdigit()]  # log lines start with a time


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_configure_on_a_read_only_or_full_disk(tmp_path, capsys, monkeypatch, code):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    assert _run("configure", tmp_path, capsys) == (0, [])
    before = {p.name: p.read_bytes() for p in (tmp_path / "data/config").iterdir()}
    # a new encoder type changes every file; the disk fails while the second one is written
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "encoder": {"type": "encodec"}}, sort_keys=False))
    real_write = Path.write_bytes
    calls = []

    def write_bytes(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == 2:
            real_write(self, data[:10])  # a partial write, then the disk gives out
            raise OSError(code, os.strerror(code), str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    status, lines = _run("configure", tmp_path, capsys)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: data/config/") and os.strerror(code).lower() in lines[0] and lines[0].endswith("(stage configure)")
    # all or nothing: the previous set, whole, and no temporary file left
    assert {p.name: p.read_bytes() for p in (tmp_path / "data/config").iterdir()} == before


def test_tokenize_on_a_full_disk_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """Discrete codes are copied to data/tokens: a full disk mid-copy is one line, no half file."""
    write_configs({**PARAMS, "encoder": {"type": "encodec"}}, tmp_path / "data/config")
    features = tmp_path / "data/features/encoder"
    features.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (features / f"{split}.parquet").write_bytes(b"PAR1" + bytes(1000))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    real_copy = shutil.copyfile

    def copyfile(src: str, dst: str, **kwargs: object) -> str:
        if Path(src).name == "val.parquet":
            Path(dst).write_bytes(b"PAR1")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    status, lines = _run("tokenize", tmp_path, capsys)
    assert status == 2 and lines == ["error: no space left on device; free some space or move data/ to a larger disk (stage tokenize)"]
    tokens = tmp_path / "data/tokens"
    assert sorted(p.name for p in tokens.iterdir()) == ["train.parquet"]  # complete, and nothing else


def test_stage_without_its_inputs_says_what_to_run(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    assert _run("decode", tmp_path, capsys) == (
        2,
        ["error: data/config/decode.json is missing: run the configure stage first (dvc repro configure) (stage decode)"],
    )
    status, lines = _run("decode", tmp_path, capsys, ["--phase", "clotho"])
    assert status == 2 and lines == ["error: params.yaml: no finetune.clotho entry (phases: none) (stage decode@clotho)"]
    (tmp_path / "params.yaml").write_text("seed: [1\n")
    status, lines = _run("decode", tmp_path, capsys)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: params.yaml is not valid YAML (")
