"""DVC overhead on a tiny copy of this project: full ``dvc repro``, no-op ``dvc repro``, and the
RVQ-depth ablation ``dvc exp run -S rvq.layers=8`` as a fraction of the full run.

The copy (clapart_core/, stages/, dvc.yaml, .dvc/config, params.yaml with the sizes below) is a
fresh git + DVC project in a temporary folder, so the figures include every stage's process
start (imports of torch, transformers, ...) and DVC's own hashing, and nothing is cached from
an earlier run. The stages run with this interpreter's environment (its folder first on PATH).
``--quick`` builds only the ``corpus`` and ``configure`` stages and times a no-op repro of them
(the full pipeline takes longer than the quick budget); it runs no experiment.

    python -m bench.bench_dvc [--quick]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from bench.common import line
from clapart_core.pipeline.params import merge_params

ROOT = Path(__file__).resolve().parent.parent

#: tiny sizes (the e2e test's, with 16 layers so that rvq.layers=8 is a real ablation)
TINY = {
    "data": {"demo": {"n_clips": 30, "clip_seconds": 3.0}},
    "beats": {"random": {"encoder_layers": 1, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "embed_dim": 32}},
    "rvq": {"max_layers": 16, "codebook_size": 16, "layers": 16, "kmeans": {"niter": 4, "max_samples": 5000}},
    "model": {"vocab_size": 300, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "attention_heads": 2, "ffn_dim": 64},
    "train": {"epochs": 1, "batch_size": 16, "warmup_steps": 2},
    "generate": {"num_beams": 2, "max_length": 20},
}



def _env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    env.update(GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost", GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    return env


def _run(args: list[str], cwd: Path) -> tuple[float, str]:
    """(wall seconds, output) of one command; raises with its output's tail when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed in {cwd}:\n{out[-3000:]}")
    return seconds, out


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def make_project(dest: Path, params: dict | None = None) -> Path:
    """A fresh git + DVC copy of the pipeline with ``params`` (default: the demo's with the
    :data:`TINY` sizes), committed."""
    for name in ("clapart_core", "stages"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    (dest / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    if params is None:
        params = merge_params(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny project"]):
        _run(args, dest)
    return dest


def main(quick: bool = False) -> Iterator[str]:
    """Yield the DVC lines (full: about a minute of stage runs on 2 cores)."""
    with tempfile.TemporaryDirectory(prefix="clapart-bench-dvc-") as tmp:
        project = make_project(Path(tmp))
        dvc = [str(Path(sys.executable).parent / "dvc")] if (Path(sys.executable).parent / "dvc").exists() else ["dvc"]
        targets = ["corpus", "configure"] if quick else []
        full, out = _run([*dvc, "repro", *targets], project)
        stages = _ran(out)
        _run(["git", "add", "-A"], project)
        _run(["git", "commit", "-qm", "baseline run"], project)
        noops = []
        for _ in range(1 if quick else 3):
            seconds, out = _run([*dvc, "repro", *targets], project)
            if _ran(out):
                raise RuntimeError(f"a no-op dvc repro reran {_ran(out)}")
            noops.append(seconds)
        noop = sorted(noops)[len(noops) // 2]
        scope = "corpus + configure only (quick)" if quick else f"all {len(stages)} stages"
        yield line(
            f"dvc_repro_noop{'_quick' if quick else ''}",
            noop,
            "s",
            f"{noop / full:.3f}x the full repro {full:.1f} s; {scope}, tiny demo, median of {len(noops)}; goal < 5 s",
        )
        if quick:
            yield line("dvc_exp_run_quick", 0, "s", "skipped in --quick: the full run times dvc exp run -S rvq.layers=8")
            return
        exp, out = _run([*dvc, "exp", "run", "-S", "rvq.layers=8"], project)
        yield line(
            "dvc_exp_run_layers8",
            exp,
            "s",
            f"{exp / full:.2f}x the full repro {full:.1f} s; reran {', '.join(_ran(out))} of {len(stages)} stages, tiny demo",
        )


if __name__ == "__main__":
    for text in main(quick="--quick" in sys.argv):
        print(text, flush=True)
