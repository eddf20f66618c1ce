# Helpers shared by every rules file: paths, the runs an experiment's config asks for, resolved
# settings and report annotations. All of it reads the registry (stn/paper/registry.py) and
# stn.settings, so no rules file spells out an experiment name, a data set list or the run layout.
import os
import shutil
import sys
from pathlib import Path

from stn import settings as stn_settings
from stn.paper import registry

RESULTS = config["results"]
EXPERIMENTS = registry.EXPERIMENTS
# Rule bodies call `stn`: the interpreter running Snakemake has it beside itself (a venv's bin/).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
# A training job asks for the GPU where the run will use one, so `--resources gpu=N` bounds them.
USE_GPU = config["device"] == "cuda" or (config["device"] == "auto" and shutil.which("nvidia-smi") is not None)


def result(path):
    """A path under the results directory."""
    return f"{RESULTS}/{path}"


def run_file(name, experiment="{experiment}"):
    """A file of a run directory, with {dataset}, {model} and {seed} left as wildcards."""
    return result(f"{registry.RUN_DIR}/{name}".format(experiment=experiment, dataset="{dataset}", model="{model}",
                                                     seed="{seed}"))


def data_file(name="{name}"):
    return result(registry.DATA_FILE.format(name=name))


def params_file(experiment="{experiment}"):
    return result(registry.PARAMS_FILE.format(experiment=experiment))


def mlflow_file(experiment="{experiment}"):
    """{experiment: MLflow experiment id}, written once the experiment exists."""
    return result(f"mlflow/experiments/{experiment}.json")


def spec_file(experiment="{experiment}"):
    return result(registry.SPEC_FILE.format(experiment=experiment))


def log_file(name):
    return result(f"logs/{name}.log")


def benchmark_file(name):
    return result(registry.BENCHMARK_FILE.format(name=name))


def run_priority(experiment, *names):
    """A run's Snakemake priority: its experiment's (registry), one more for each of its data set and model that
    the experiment lists as slowest (registry: Table 1's TC and CNN, Table 4's CNN, Table 5's TC), so that no long
    job starts last and runs alone at the end. The jobs that a table's runs wait for (its parameter table, MLflow
    experiment, job files, data) take at least the same: Snakemake does not pass priorities upstream, so a Table 1
    whose parameter table sat at 0 waited behind every appendix run."""
    spec = EXPERIMENTS[experiment]
    return spec.priority + sum(name in spec.slowest for name in names)


def upstream_priority(experiment):
    """The priority of a job that every run of `experiment` waits for: above its slowest run's."""
    spec = EXPERIMENTS[experiment]
    return spec.priority + len(spec.slowest) + 1


# A table's render job (seconds of work) runs as soon as its runs are done, ahead of every waiting run: at
# Snakemake's default 0 the session-15 default run had all 80 of Table 1's runs done at 32 min and its table
# still unwritten at 50, behind the appendix runs.
RENDER_PRIORITY = 100


def run_log(experiment="{experiment}", suffix=""):
    """logs/<experiment>/<dataset>_<model>_seed<n><suffix>.log, wildcards left in."""
    return log_file(f"{experiment}/{{dataset}}_{{model}}_seed{{seed}}{suffix}")


def run_benchmark(experiment="{experiment}"):
    return benchmark_file(registry.RUN_BENCHMARK.format(experiment=experiment, dataset="{dataset}", model="{model}",
                                                        seed="{seed}"))


def data_limits():
    """--limit-<split> N options of the data-generating commands (the config's data.limits)."""
    limits = config["data"].get("limits") or {}
    return " ".join(f"--limit-{k} {limits[k]}" for k in ("train", "val", "test") if limits.get(k))


def data_options(wildcards):
    """--option KEY=VALUE for each key of the config's data section that the data set's generator takes."""
    keys = [key for key, _ in registry.DATASETS[wildcards.name].options]
    return "--option " + " ".join(f"{k}={config['data'][k]}" for k in keys) if keys else ""


def net_options(net):
    """`stn params` options of a classification table's `net` section."""
    return f"--init {net['init']}" + (" --standardise" if net["standardise"] else "")


def grid(experiment):
    return EXPERIMENTS[experiment].grid(config[experiment], config)


def runs(experiment, name="metrics.json"):
    """That file of every run the config asks of the experiment."""
    return [str(registry.run_dir(RESULTS, experiment, d, m, s) / name) for d, m, s in grid(experiment).cells()]


def experiments_of(module):
    """Wildcard constraint: the registered experiments that a module runs."""
    return "|".join(n for n, e in EXPERIMENTS.items() if e.module == module)


def job_spec(wildcards):
    """One run's resolved settings (stn.settings.resolve_job): Snakemake tracks this params value, so a
    changed setting rewrites job.json, and with it reruns exactly the runs it changes."""
    return stn_settings.resolve_job(config, wildcards.experiment, wildcards.dataset, wildcards.model, int(wildcards.seed))


def encoder_pattern(from_table1=None):
    """Wildcard constraint: the data sets of Table 5's e() CNNs (stn.settings.encoder_datasets), or a regex
    matching nothing."""
    return "|".join(stn_settings.encoder_datasets(config, from_table1)) or "(?!)"


def experiment_spec(wildcards):
    """What an experiment's render step reads: its resolved config section and the runs it asks for."""
    name = wildcards.experiment
    g = grid(name)
    return stn_settings.canonical({
        "experiment": name, "config_name": config["name"], "results": RESULTS, "mlflow": mlflow_file(name),
        "section": config[name],
        "grid": {"datasets": g.datasets, "models": g.models, "seeds": g.seeds, "exclude": g.exclude},
        "settings": stn_settings.table_settings(config, name), "overrides": stn_settings.overrides(config, name)})


def report_outputs(experiment):
    """The experiment's tables and figures as named outputs, marked for `snakemake --report`."""
    e = EXPERIMENTS[experiment]
    out = {}
    for path in registry.outputs(config, experiment):
        kind = "tables" if path.startswith("tables/") else "figures"
        key = Path(path).name.replace(".", "_").replace("-", "_")
        out[key] = report(result(path), caption=f"../report/{kind[:-1]}.rst", category=e.title, subcategory=kind,
                          labels={"file": Path(path).name, "experiment": experiment})
    return out


def all_outputs():
    outs = [result(p) for name in EXPERIMENTS for p in registry.outputs(config, name)]
    return outs + [params_file(n) .replace(".json", ".md") for n in EXPERIMENTS if EXPERIMENTS[n].module == "classification"]
