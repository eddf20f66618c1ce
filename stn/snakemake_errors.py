"""A YAML error in a `--configfile` named by file, line and column in Snakemake's own message.

Snakemake (9.x) reads every `--configfile` before the Snakefile runs, in
`snakemake.common.configfile._load_configfile`, and turns a YAML syntax error into "Config file is not
valid JSON or YAML. In case of YAML, make sure to not mix whitespace and tab indentation.", without the
file or the parser's position. `install()` wraps that function so that the same `WorkflowError` says
which file and where (the message `stn check-config` gives): "/path/my.yaml is not valid YAML: while
parsing a flow sequence in "<file>", line 3, column 13 ...". Any other error passes through unchanged.

It runs at interpreter start-up from `stn-snakemake-errors.pth`, which `./setup.sh` writes into the
environment's site-packages (`stn snakemake-hook` writes it, `stn snakemake-hook --remove` removes it;
not `python -m` this module, which the .pth has already imported); in any process not started as `snakemake` or `python -m snakemake` it does nothing, and it
imports nothing until then. Where Snakemake's loader has another name or shape (another major
version), it leaves Snakemake alone.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

PTH_NAME = "stn-snakemake-errors.pth"
PTH_LINE = "import stn.snakemake_errors as _s; _s.install()\n"


def started_as_snakemake(argv: list[str] | None = None) -> bool:
    """Whether this interpreter was started as Snakemake (`argv`: the interpreter's original command line):
    its console script (`python .../bin/snakemake ...`, or the script itself), or `python -m snakemake`."""
    argv = list(sys.orig_argv if argv is None else argv)
    if any(Path(a).name in ("snakemake", "snakemake.exe") for a in argv[:2]):
        return True
    return any(a == "-m" and b == "snakemake" for a, b in zip(argv, argv[1:]))


def naming_the_file(load):
    """`load` (Snakemake's `_load_configfile(configpath_or_obj, filetype)`), its "not valid JSON or YAML" error
    re-raised with the file and the YAML parser's own message (line and column) in place of its text. The
    error itself is re-raised, not a new one, so that Snakemake shows no traceback line of this module."""
    @functools.wraps(load)
    def load_config(configpath_or_obj, filetype="Config"):
        try:
            return load(configpath_or_obj, filetype)
        except Exception as exc:
            import yaml

            cause = exc.__context__
            if isinstance(cause, yaml.YAMLError) and exc.args and "not valid JSON or YAML" in str(exc.args[0]):
                from .config import yaml_message

                where = (os.fspath(configpath_or_obj) if isinstance(configpath_or_obj, (str, os.PathLike))
                         else getattr(configpath_or_obj, "name", "(a stream)"))
                exc.args = (f"{filetype} file {yaml_message(where, cause)}", *exc.args[1:])
            raise
    load_config.stn_wrapped = True
    return load_config


def install() -> bool:
    """Wrap Snakemake's config-file loader in this process, if it was started as Snakemake and the loader is
    the one this module knows; True if it is wrapped (now or before)."""
    if os.environ.get("STN_SNAKEMAKE_ERRORS") == "0" or not started_as_snakemake():
        return False
    try:
        from snakemake.common import configfile
    except Exception:  # noqa: BLE001 (no Snakemake, or another layout: leave it alone)
        return False
    load = getattr(configfile, "_load_configfile", None)
    if load is None:
        return False
    if not getattr(load, "stn_wrapped", False):
        configfile._load_configfile = naming_the_file(load)
    return True


def pth_path() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def set_installed(on: bool) -> Path:
    """Write (or remove) the .pth that runs `install()` at start-up in this environment; returns its path."""
    path = pth_path()
    if on:
        path.write_text(PTH_LINE)
    else:
        path.unlink(missing_ok=True)
    return path
