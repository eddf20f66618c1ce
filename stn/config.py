"""Pipeline configuration: load YAML, validate against the assembled schema, check references.

The schema is workflow/schemas/config.schema.json (the common keys) plus one part per registered
experiment (workflow/schemas/<name>.schema.json), with the enums of data sets and models taken from
the registry and the training keys from stn.settings.TrainSettings. Validation runs when the
Snakefile is parsed, so a misspelt key, a bad value or a reference to something the config does
not train stops the run before any job starts, with a message that names the key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import yaml

from . import settings
from .paper import registry


class ConfigError(ValueError):
    pass


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"schema file {path} does not exist (every registered experiment needs "
                          f"workflow/schemas/<name>.schema.json)") from None


def schema(schema_path: str | Path) -> dict:
    """The whole config schema: the common part at `schema_path` and every experiment's part beside it."""
    schema_path = Path(schema_path)
    full = _read(schema_path)
    defs = full.setdefault("$defs", {})
    defs["train"] = settings.train_schema()
    defs["train_keys"] = settings.train_schema(complete=False)
    for e in registry.EXPERIMENTS.values():
        full["properties"][e.name] = _read(schema_path.parent / f"{e.name}.schema.json")
        full["required"].append(e.name)
        defs[f"{e.name}_dataset"] = {"enum": list(e.datasets)}
        defs[f"{e.name}_model"] = {"enum": list(e.models)}
        defs[f"{e.name}_override"] = settings.override_schema(list(e.datasets), list(e.models))
    return full


def references(config: dict) -> list[str]:
    """What the schema cannot see: values that must name something the config trains (each
    experiment's registry entry declares its references), and the train_overrides' selectors."""
    problems = []
    for e in registry.EXPERIMENTS.values():
        for key, values, among in e.references(config):
            problems += [f"{key}: {v!r} is not among {among}, which the config trains" for v in values if v not in among]
        problems += e.problems(config)
        try:
            settings.overrides(config, e.name)
        except settings.SettingsError as exc:
            problems.append(str(exc))
    return problems


def _results_problems(results: str) -> list[str]:
    """The results directory must be one this user can write (or not exist yet)."""
    path = Path(results)
    if path.exists() and not path.is_dir():
        return [f"results: {path} is a file, not a directory; point results at a directory (it is created if missing)"]
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        return [f"results: {path} is not writable by this user; fix its permissions or point results elsewhere"]
    return []


def validate(config: dict, schema_path: str | Path) -> dict:
    """Validate against the assembled schema, then the references between sections; raises ConfigError
    naming every offending key."""
    validator = jsonschema.Draft202012Validator(schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            if e.validator == "additionalProperties":
                extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
                lines.append(f"  {_where(e)}: unknown key(s) {extra}; allowed: {sorted(e.schema.get('properties', {}))}")
            else:
                lines.append(f"  {_where(e)}: {e.message}")
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    problems = references(config) + _results_problems(config["results"])
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))
    return config


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def yaml_message(path, exc: yaml.YAMLError) -> str:
    """One line naming the file and the YAML parser's complaint, with its line and column."""
    return f"{path} is not valid YAML: {' '.join(str(exc).split())}"


def read_config(path: str | Path) -> dict:
    """A YAML config file as a mapping; a syntax error names the file and the line."""
    path = Path(path)
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_message(path, exc)) from None
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"{path} must be a YAML mapping of config keys, not a {type(config).__name__}")
    return config or {}


def with_default(config: dict, named_files, default_path: str | Path) -> dict:
    """The config Snakemake will run: without --configfile, the default file under the --config overrides
    that `config` holds so far; with --configfile, `config` as Snakemake built it (each named file is
    checked as complete on its own by check_named_files). The Snakefile loads the default itself, so that
    a YAML error in it names the file and line."""
    return config if named_files else _merged(read_config(default_path), config)


def check_named_files(paths, overrides: dict, schema_path: str | Path) -> None:
    """A --configfile must be a complete config on its own, so that no key reaches a run from a file the
    user did not name; the error names the file and every missing or bad key."""
    for path in paths:
        path = Path(path)
        named = read_config(path)
        try:
            validate(_merged(named, overrides or {}), schema_path)
        except ConfigError as exc:
            raise ConfigError(f"{path} is not a complete config on its own (no key is taken from config/config.yaml): "
                              f"{exc}") from None


def load(path: str | Path, schema_path: str | Path) -> dict:
    return validate(read_config(path), schema_path)
