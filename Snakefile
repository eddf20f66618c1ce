# Spatial Transformer Networks (Jaderberg et al., 2015): regenerate the paper's tables and figures.
#   snakemake --cores all                                  # default config (2-core CPU sized)
#   snakemake --cores all --configfile config/paper.yaml   # the paper's protocol (GPU)
#   snakemake --cores all --configfile config/smoke.yaml   # minutes, for tests
#   snakemake --report results/report.html                 # every table and figure, with captions
# Snakemake decides what runs and when; every rule body is one `stn` command (see stn/cli.py).
# The experiments are declared once, in stn/paper/registry.py: each has workflow/rules/<name>.smk.
import sys
from pathlib import Path

from stn import warm
from stn.config import ConfigError, check_named_files, validate, with_default
from stn.paper.registry import EXPERIMENTS

# The default config (config/config.yaml) is read here rather than by a `configfile:` directive, so that
# a --configfile replaces it instead of being layered on it, and a YAML error names the file and line.
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.json"
try:
    config.update(with_default(config, workflow.overwrite_configfiles, Path(workflow.basedir) / "config" / "config.yaml"))
    check_named_files(workflow.overwrite_configfiles, workflow.config_settings.overwrite_config, SCHEMA)
    validate(config, SCHEMA)
except ConfigError as exc:
    sys.exit(f"{exc}\n(fix the config file or --config override; the schema is workflow/schemas/*.schema.json)")


report: "workflow/report/workflow.rst"


envvars:
    "PATH",  # rule bodies call `stn`, found on PATH beside the interpreter that runs Snakemake (common.smk)


wildcard_constraints:
    dataset=r"[^/]+",
    model=r"[^/]+",
    seed=r"\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/setup.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classification.smk"


for name in EXPERIMENTS:

    include: f"workflow/rules/{name}.smk"


rule all:
    input:
        all_outputs(),
    default_target: True


# One warm server imports torch and MLflow once and forks each local job's `stn` (stn/warm.py): ~6 s of
# CPU a job, ~15 of the default run's CPU-minutes. Under Slurm only the local rules (localrule: True) use it;
# Slurm jobs start cold, in their own allocation, even on this machine. STN_WARM=0: off.
onstart:
    warm.start(log_file("warm_server"))


onsuccess:
    warm.stop()


onerror:
    warm.stop()
