"""Pipeline configuration: load YAML, validate against workflow/schemas/config.schema.json.

Validation runs when the Snakefile is parsed, so a misspelt key or a bad value stops the run
before any job starts, with a message that names the key.
"""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    pass


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(config: dict, schema_path: str | Path) -> dict:
    """Validate and fill defaults; raises ConfigError naming every offending key."""
    schema = json.loads(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
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
    return config


def load(path: str | Path, schema_path: str | Path) -> dict:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return validate(config or {}, schema_path)
