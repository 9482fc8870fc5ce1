"""Stage `configure`: resolve params.yaml into data/config/{decode,features,codebooks,tokenize}.json,
holding only the settings that apply to encoder.type (see clapart_core/pipeline_config.py for why)."""

from clapart_core.params import start_stage
from clapart_core.pipeline_config import write_configs

if __name__ == "__main__":
    write_configs(start_stage("configure"))
