# Spatial Transformer Networks (Jaderberg et al., 2015): regenerate the paper's tables and figures.
#   snakemake --cores all                                  # default config (2-core CPU sized)
#   snakemake --cores all --configfile config/paper.yaml   # the paper's protocol (GPU)
#   snakemake --cores all --configfile config/smoke.yaml   # minutes, for tests
# Snakemake decides what runs and when; every rule body is one `stn` command (see stn/cli.py).
import json
import shutil
import sys
from pathlib import Path

from stn.config import ConfigError, validate

configfile: "config/config.yaml"

try:
    validate(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.json")
except ConfigError as exc:
    sys.exit(f"{exc}\n(fix the config file or --config override; the schema is workflow/schemas/config.schema.json)")

if config["table5"]["encoder_dataset"] not in config["table1"]["datasets"]:
    sys.exit(f"table5.encoder_dataset {config['table5']['encoder_dataset']!r} must be one of table1.datasets "
             f"{config['table1']['datasets']}: the encoder is that data set's trained Table 1 CNN")

RESULTS = config["results"]
STN = f'"{sys.executable}" -m stn.cli'
# A training job asks for the GPU where the run will use one, so `--resources gpu=N` bounds them.
USE_GPU = config["device"] == "cuda" or (config["device"] == "auto" and shutil.which("nvidia-smi") is not None)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classification.smk"
include: "workflow/rules/colocalisation.smk"
include: "workflow/rules/volumetric.smk"


rule all:
    input:
        rules.classification_all.input,
        rules.table5.output,
        rules.volumetric_report.output,
