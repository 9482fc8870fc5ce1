"""Stage `configure`: validate the whole of params.yaml (every fine-tuning phase included) and check
that the models and corpora it names exist, then resolve it into
data/config/{decode,features,codebooks,tokenize}.json, holding only the settings that apply to
encoder.type (see clapart_core/pipeline/config.py for why). dvc.yaml gives it the whole file as
params, so any change, a mistyped key included, is checked here before a long stage runs."""

import logging
from typing import Any

from clapart_core.pipeline.config import configure
from clapart_core.pipeline.params import Workspace, run_stage


def main(params: dict[str, Any], _: Workspace) -> None:
    for note in configure(params):
        logging.getLogger("configure").warning(note)


if __name__ == "__main__":
    run_stage("configure", main)
