"""Settings, resolved once: from the config (and its per-run overrides) to one typed job spec per run.

`TrainSettings` is the one list of training keys: the config schema's `train` and
`train_override` definitions are derived from its fields, and `resolve_job` is the one function
that turns a config into the settings of one run. The pipeline writes each run's resolved spec to
runs/<experiment>/<dataset>/<model>/seed<n>/job.json, which `stn run --job` reads. The module itself
imports no torch (the stn package does, once, when the Snakefile imports it).
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .paper import registry


def _key(schema: dict, help: str, default: Any = MISSING):
    return field(default=default, metadata={"schema": schema, "help": help})


POSITIVE_INT = {"type": "integer", "minimum": 1}
OPTIMIZER_NAMES = ("sgd", "adam")
COMPILE_MODES = ("none", "default", "reduce-overhead", "graph")  # how a run's training steps run (stn.train.TrainStep)
INITS = ("default", "he")  # weight initialisations (stn.modules.initialise)
PRECISIONS = ("fp32", "bf16")  # the arithmetic of a run's training steps (stn.train.autocast)


LATER_KEYS = ("lr_milestones", "compile", "loc_warmup", "start_zoom", "precision")  # left out of a job spec at their defaults


@dataclass(frozen=True)
class TrainSettings:
    """How one classification run trains (appendix A.4 unless the config says otherwise)."""

    iterations: int = _key(POSITIVE_INT, "optimiser steps")
    batch_size: int = _key(POSITIVE_INT, "images per step")
    lr: float = _key({"type": "number", "exclusiveMinimum": 0}, "base learning rate")
    momentum: float = _key({"type": "number", "minimum": 0, "maximum": 1}, "SGD momentum, or Adam's beta1")
    lr_step: int = _key(POSITIVE_INT, "iterations between learning-rate drops")
    lr_gamma: float = _key({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "factor of each drop")
    weight_decay: float = _key({"type": "number", "minimum": 0}, "L2 weight decay")
    loc_lr_mult: float = _key({"type": "number", "exclusiveMinimum": 0}, "localisation-net learning-rate multiplier")
    eval_every: int = _key(POSITIVE_INT, "iterations between validation evaluations")
    eval_samples: int = _key(POSITIVE_INT, "validation images per evaluation")
    checkpoint_every: int = _key(POSITIVE_INT, "iterations between checkpoints (a killed job resumes from the last)")
    channels_last: bool = _key({"type": "boolean"}, "channels-last memory layout for 2-D inputs of models with a 2-D convolution (the others keep channels-first)")
    optimizer: str = _key({"enum": list(OPTIMIZER_NAMES)}, "sgd (the paper's) or adam, whose beta1 is momentum", "sgd")
    lr_milestones: list[int] | None = _key(
        {"type": ["array", "null"], "items": POSITIVE_INT, "uniqueItems": True},
        "iterations at which the rate drops by lr_gamma, in place of every lr_step (CUB: 10k, 20k, 25k)", None)
    compile: str = _key({"enum": list(COMPILE_MODES)},
                        "none (eager); the torch.compile mode of the training steps' forward and backward: default "
                        "(Inductor's kernels) or reduce-overhead (on a GPU also CUDA graphs of those two); or graph: "
                        "on a GPU the whole step (batch gather, forward, backward and optimiser step) recorded once "
                        "as a CUDA graph and replayed, with no per-step host work but a copy and a replay (elsewhere "
                        "eager). Evaluation stays eager", "none")
    loc_warmup: int = _key({"type": "integer", "minimum": 0},
                           "steps over which the localisation nets' learning rate ramps linearly from 0 to its "
                           "value, so that the classifier learns before the transformers move (0: no ramp; "
                           "docs/CHOICES.md has what it did on TC)", 0)
    start_zoom: float = _key({"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                             "the transformers' regressors start at x -> start_zoom * x instead of the identity (1, the "
                             "paper's): below 1 each starts zoomed in on the centre (docs/CHOICES.md has what it did on TC)",
                             1.0)
    precision: str = _key({"enum": list(PRECISIONS)},
                          "fp32, or bf16: each training step's forward and backward under torch.autocast in bfloat16 "
                          "(convolutions and matrix products; on CPUs with AMX or AVX-512 BF16 and on GPUs with tensor "
                          "cores, faster). Weights, gradients, optimiser, the transformers' regressors and samplers, "
                          "and every evaluation stay fp32 (docs/CHOICES.md)", "fp32")
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda; the config's top-level device"})

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
        if missing:
            raise ValueError(f"training settings lack {missing}")
        for key, allowed in (("optimizer", OPTIMIZER_NAMES), ("compile", COMPILE_MODES), ("precision", PRECISIONS)):
            if key in d and d[key] not in allowed:
                raise ValueError(f"{key} {d[key]!r} is not one of {sorted(allowed)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """The settings as a mapping; the keys added after job specs were first written (LATER_KEYS) are left out
        at their defaults, so a job spec written before such a key existed still reads as the same settings."""
        unset = {f.name: f.default for f in fields(self) if f.name in LATER_KEYS}
        return {k: v for k, v in asdict(self).items() if not (k in unset and v == unset[k])}


def _config_keys() -> list:
    return [f for f in fields(TrainSettings) if "schema" in f.metadata]


def _train_properties() -> dict:
    return {f.name: {**f.metadata["schema"], "description": f.metadata["help"]} for f in _config_keys()}


def train_schema(complete: bool = True) -> dict:
    """The schema of a config's `train` mapping, from TrainSettings' fields; with complete=False, of some of
    its keys (settings given over another section's, such as table5.encoder_training.P.train)."""
    required = [f.name for f in _config_keys() if f.default is MISSING] if complete else []
    return {"type": "object", "additionalProperties": False, "required": required, "properties": _train_properties()}


def override_schema(datasets: list[str], models: list[str]) -> dict:
    """One `train_overrides` entry: a selector (data set, model or both) and any training keys."""
    return {"type": "object", "additionalProperties": False, "minProperties": 2,
            "properties": {"dataset": {"enum": list(datasets)}, "model": {"enum": list(models)}, **_train_properties()},
            "anyOf": [{"required": ["dataset"]}, {"required": ["model"]}],
            "description": "settings that replace the table's train settings for the runs it selects"}


class SettingsError(ValueError):
    pass


def overrides(config: dict, name: str) -> list[dict]:
    """The section's `train_overrides` as [{"select": {dataset and/or model}, "settings": {...}}], checked."""
    section, out, seen = config[name], [], set()
    grid = registry.experiment(name).grid(section, config)
    for entry in section.get("train_overrides") or []:
        entry = dict(entry)
        select = {k: entry.pop(k) for k in ("dataset", "model") if k in entry}
        if "model" in select and select["model"] not in grid.models:
            raise SettingsError(f"{name}.train_overrides names model {select['model']}, which is not in {name}.models")
        if "dataset" in select and select["dataset"] not in grid.datasets:
            raise SettingsError(f"{name}.train_overrides names data set {select['dataset']}, which {name} does not train "
                                f"(it trains {grid.datasets}); remove the entry or fix its data set")
        key = tuple(sorted(select.items()))
        if key in seen:
            raise SettingsError(f"{name}.train_overrides names {'/'.join(select.values())} twice; merge the two entries")
        seen.add(key)
        out.append({"select": select, "settings": entry})
    return out


def table_settings(config: dict, name: str) -> dict:
    """The experiment's settings before any override (what its caption compares with the paper)."""
    return _typed(config, name, dict(config[name][registry.experiment(name).settings_key]))


def _typed(config: dict, name: str, settings: dict) -> dict:
    """A "train" mapping checked and completed as TrainSettings (with the config's device); others as they are."""
    if registry.experiment(name).settings_key != "train":
        return settings
    return TrainSettings.from_dict({**settings, "device": config["device"]}).to_dict()


def resolve_job(config: dict, name: str, dataset: str, model: str, seed: int) -> dict:
    """The job spec of one run: what it is, its resolved settings and its experiment's extras."""
    e = registry.experiment(name)
    grid = e.grid(config[name], config)
    if not grid.has(dataset, model) or int(seed) not in grid.seeds:
        raise SettingsError(f"{name} has no run {dataset}/{model}/seed{seed} in this config "
                            f"(data sets {grid.datasets}, models {grid.models}, seeds {grid.seeds}, not {grid.exclude})")
    settings = dict(config[name][e.settings_key])
    run = {"dataset": dataset, "model": model}
    for o in overrides(config, name):
        if all(run[k] == v for k, v in o["select"].items()):
            settings.update(o["settings"])
    settings = _typed(config, name, settings)
    extra = {k: config[name][k] for k in e.job_keys}
    return canonical({"experiment": name, "dataset": dataset, "model": model, "seed": int(seed), "settings": settings,
            "extra": extra, "results": config["results"]})


ENCODER_RUN = "encoder_{dataset}"  # the auxiliary run (registry.AUX_DIR) of Table 5's e() CNN on a data set


def encoder_datasets(config: dict, from_table1: bool | None = None) -> list[str]:
    """The data sets whose CNNs Table 5's e() uses for any of the config's variants (table5.encoders); with
    `from_table1`, only those whose CNN is (True) or is not (False) Table 1's own run (`encoder_from_table1`)."""
    used = registry.table5_encoder_datasets(config["table5"], config["table5"]["variants"])
    return [d for d in used if from_table1 is None or encoder_from_table1(config, d) == from_table1]


def encoder_from_table1(config: dict, dataset: str) -> bool:
    """Whether e()'s CNN on `dataset` is Table 1's first-seed CNN run itself: without a table5.encoder_training
    entry its job is that run's (same data, inputs, settings and seed; the weights came out bitwise equal), so
    Table 5 copies it instead of training it again."""
    return dataset not in config["table5"].get("encoder_training", {})


def encoder_table1_files(config: dict, dataset: str) -> dict[str, str]:
    """{"model", "metrics": file} of Table 1's first-seed CNN run on `dataset` (what `encoder_from_table1` reuses)."""
    seed = registry.experiment("table1").grid(config["table1"], config).seeds[0]
    run = registry.run_dir(config["results"], "table1", dataset, "CNN", seed)
    return {"model": str(run / "model.pt"), "metrics": str(run / "metrics.json")}


def encoder_file(config: dict, dataset: str, file: str) -> str:
    """A file of the run that trains Table 5's e() CNN on `dataset` (a wildcard such as "{encoder}" is kept)."""
    return str(registry.aux_dir(config["results"], "table5", ENCODER_RUN.format(dataset=dataset)) / file)


def encoder_inputs(config: dict, variant: str) -> dict[str, str]:
    """{input name: model.pt} of the CNNs Table 5's e() uses for `variant`; its run reads them by these names."""
    return {ENCODER_RUN.format(dataset=d): encoder_file(config, d, "model.pt") for d in config["table5"]["encoders"][variant]}


def encoder_job(config: dict, dataset: str) -> dict:
    """The job of one of Table 5's e() CNNs: a Table 1 CNN run on `dataset` (its first seed, the settings Table 1
    gives that data set's CNN, with table5.encoder_training[dataset].train over them), trained on its own data
    reading and inputs (the rest of that entry; what the entry leaves out is Table 1's own), in
    runs/table5/encoder_<dataset>/."""
    section = config["table5"]
    own = section.get("encoder_training", {}).get(dataset, {})
    job = resolve_job(config, "table1", dataset, "CNN", registry.experiment("table1").grid(config["table1"], config).seeds[0])
    job["settings"] = _typed(config, "table1", {**job["settings"], **own.get("train", {})})
    encoder = {key: own.get(key, config["data"][key]) for key, _ in registry.DATASETS[dataset].options}
    encoder.update(standardise=own.get("standardise", config["table1"]["net"]["standardise"]), train=own.get("train", {}))
    extra = {"encoder": encoder, "init": config["table1"]["net"]["init"], "data_seed": config["data"]["seed"],
             "limits": config["data"].get("limits") or {}}
    return canonical({**job, "experiment": "table5", "model": "encoder", "extra": extra})


def canonical(obj):
    """`obj` with every mapping's keys sorted: Snakemake compares a params value's text, so the same
    settings written in another key order (a re-dumped YAML) must not rerun a job."""
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


LATE = 0.2  # the closing fraction of a run's steps over which `late_fall` measures progress
STILL_LEARNING = 2.0  # points of validation error: a run whose error fell more over its last LATE was still learning


def late_fall(curve: list[dict], iterations: int, late: float = LATE) -> float | None:
    """Points by which the validation error fell over the run's last `late` fraction of steps: from the last
    evaluation at or before (1 − late) × iterations to the final one; None without such an evaluation. Above
    STILL_LEARNING the run was still learning when it stopped, and its number is not where it was heading."""
    start = [p for p in curve if p["iteration"] <= (1 - late) * iterations]
    return float(start[-1]["val_error"] - curve[-1]["val_error"]) if start and curve else None
