"""Stage `configure`: resolve params.yaml into data/config/{decode,features,codebooks,tokenize}.json,
holding only the settings that apply to encoder.type (see clapart_core/pipeline/config.py for why)."""

import logging

from clapart_core.pipeline.config import PreflightError, preflight, write_configs
from clapart_core.pipeline.params import start_stage

if __name__ == "__main__":
    params, _ = start_stage("configure")
    try:
        # every model the run will load must exist before decode/features start (they take long)
        for note in preflight(params):
            logging.getLogger("configure").warning(note)
    except PreflightError as err:
        raise SystemExit(f"error: {err}") from None
    write_configs(params)
