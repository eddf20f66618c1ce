"""The paper's experiments, one module each, all with the same small interface:

- `build_data(...)`: generate the experiment's data set(s) once (where it has its own);
- `build_model(...)`: one model of the experiment;
- `run_job(job, inputs, out_dir) -> metrics`: one run from its job.json (stn.settings.resolve_job),
  writing metrics.json last;
- `render(spec, results) -> paths`: its tables and figures from exactly the runs the spec's config asks for.

Which module serves which experiment is declared in the registry (stn/paper/registry.py).
"""
from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path
from types import ModuleType

from ..paper import registry


def module(name: str) -> ModuleType:
    """The module that runs and renders registered experiment `name`."""
    return importlib.import_module(f"{__name__}.{registry.experiment(name).module}")


def run_records(results: str | Path, name: str, grid: registry.Grid) -> list[dict]:
    """metrics.json of every run the grid asks for, in grid order; a missing run is an error."""
    from ..io import read_json

    paths = [registry.run_dir(results, name, d, m, s) / "metrics.json" for d, m, s in grid.cells()]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} run(s) of this config have not finished, e.g. {missing[0]}; "
                                f"train them first (snakemake {missing[0]})")
    return [read_json(p) for p in paths]


def scheduler() -> dict[str, str]:
    """The batch system's ids of the job running this process ({} outside one): a run under Slurm records
    its SLURM_JOB_ID in metrics.json and as an MLflow tag, so a result can be traced to its cluster job."""
    import os

    return {"slurm_job_id": os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}


# What a run's numbers do not depend on: rendering, benchmarks and the command line (relative to stn/).
NOT_IN_CODE_VERSION = ("report/", "bench", "cli.py")


@functools.cache
def code_version(root: Path = Path(__file__).parents[1]) -> str:
    """The version of the code a run's numbers come from: the sha256 (first 12 hex digits) of the library's source
    under `root` (stn/: its .py, .h, .cpp and .cu files, paths and contents, NOT_IN_CODE_VERSION left out). Runs of
    one version are bitwise repeatable; runs of two versions may differ with the same seed, so a table that mixes
    them says so (`stn.report.tables.mixed_code`). Edits to comments count: the version says "may differ"."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix in (".py", ".h", ".cpp", ".cu")):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel or rel.startswith(NOT_IN_CODE_VERSION):
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def write_metrics(out_dir: str | Path, metrics: dict) -> dict:
    """Write a run's metrics.json (its last file: the run counts as finished once it exists), with the
    version of the code that made it (`code_version`), when it finished (`finished`, Unix seconds: `stn readme`
    times the run from it, as file times change when results are copied or touched) and the batch job that
    ran it; returns what was written."""
    import time

    from ..io import write_json

    metrics = {**metrics, "code_version": code_version(), "finished": round(time.time(), 1), **scheduler()}
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def load_weights(model, path: str | Path, what: str):
    """`model` with the weights a finished run saved at `path` (model.pt), in eval mode on the CPU."""
    from ..io import load_torch

    saved = load_torch(path, what)
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise ValueError(f"{path} holds no state_dict; it is not a model.pt this pipeline wrote (re-run {what})")
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit this config's model ({str(exc).splitlines()[0]}); re-run {what}") from None
    return model.eval()


def transform_stats(model, x, batch: int = 500) -> dict[str, float]:
    """Whether a model's affine transformers learnt anything: over the images `x` (uint8, (N, [C,] H, W)),
    the mean zoom √|det A| (1 = the identity's scale, below 1 = zoomed in) and the mean length of the
    translation (half-canvas units) of the θ that `model.transform` returns (every transformer of a
    parallel pair, the first of a chain); {} for a model without transformers or with non-affine ones."""
    import torch
    from torch import nn

    from ..train import as_input
    from ..transforms import Affine

    sts = getattr(model, "sts", None)
    sts = list(sts.values()) if isinstance(sts, nn.ModuleDict) else list(sts or [])
    if not sts or not all(isinstance(st.transform, Affine) for st in sts):
        return {}
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        theta = torch.cat([model.transform(as_input(torch.as_tensor(x[s:s + batch]), device, False))[1].reshape(-1, 6).cpu()
                           for s in range(0, len(x), batch)]).double()
    det = theta[:, 0] * theta[:, 4] - theta[:, 1] * theta[:, 3]
    return {"zoom": float(det.abs().sqrt().mean()), "shift": float(theta[:, [2, 5]].norm(dim=1).mean())}


def centroid_spread(images) -> float:
    """How much the content of one channel moves about: over images (N, H, W), the RMS distance in pixels of each
    image's ink centroid (negative values count as no ink) from the images' mean centroid."""
    import torch

    ink = images.clamp(min=0)
    mass = ink.sum((1, 2)).clamp(min=1e-6)
    rows, cols = (torch.arange(n, dtype=ink.dtype) for n in ink.shape[1:])
    centre = torch.stack([(ink.sum(1) * cols).sum(1) / mass, (ink.sum(2) * rows).sum(1) / mass], 1)
    return float((centre - centre.mean(0)).pow(2).sum(1).mean().sqrt())


def channel_focus(model, x) -> dict[str, list[float]]:
    """Which channel each of a model's parallel transformers takes (Table 4 (right): "the two spatial transformers
    co-adapt to focus on a single channel each"): for the images x (N, C, H, W) in [0, 1], the `centroid_spread` of
    every input channel ("input") and of every channel of each transformer's output ("ST1", "ST2", ...). A
    transformer that has taken a channel's digit holds it in one place (about 1 px); a channel it leaves moves as
    much as in the input (RTS: about 6.5 px) or more. {} for a model without parallel transformers."""
    import torch

    sts = getattr(model, "sts", None)
    if sts is None or len(sts) < 2:
        return {}
    model.eval()
    with torch.no_grad():
        out, _ = model.transform(x)
    c = x.shape[1]
    focus = {"input": [centroid_spread(x[:, j]) for j in range(c)]}
    for k in range(len(sts)):
        focus[f"ST{k + 1}"] = [centroid_spread(out[:, k * c + j]) for j in range(c)]
    return focus


def standard_tags(job_file: Path) -> dict[str, str]:
    """MLflow's own tags for who ran what from which commit (the run page's User, Source and Git commit), and
    the version of the library's code (`code_version`)."""
    import getpass

    from ..train import git_commit

    try:
        user = getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.type": "LOCAL",
            "mlflow.source.name": f"stn run --job {job_file}", "mlflow.source.git.commit": git_commit(),
            "code_version": code_version()}


def tracker(job: dict, experiments_file: Path, tags: dict, out_dir: Path, data: Path | None = None):
    """A factory of the job's MLflow run (resumed by id after a restart), for stn.train.train_run; if the
    store is unreachable the run keeps its tracking in out_dir/mlflow_pending.jsonl (stn.tracking). A new
    run records `data` (the data set's file, with the sha256 of tags["data_sha256"]) as its dataset input."""
    from .. import tracking
    from ..io import read_json

    ids = read_json(experiments_file)
    name = job["experiment"]
    if name not in ids:
        raise KeyError(f"MLflow experiment {name!r} is not in {experiments_file}; re-run the mlflow_experiment rule")
    label = f"{job['dataset']}/{job['model']}/seed{job['seed']}"
    parent = ids.get("parents", {}).get(name)  # the table's parent run (tracking.init_parent_runs)
    tags = {**tags, **scheduler(), **standard_tags(Path(out_dir) / "job.json"),
            **({"mlflow.parentRunId": parent} if parent else {})}
    uri = tracking.tracking_uri(job["results"])

    def make(run_id: str | None = None) -> tracking.Run:
        run = tracking.Run(uri, ids[name], label, run_id, tags, Path(out_dir) / tracking.PENDING,
                           tracking.experiment_name(name, job["results"]))
        if run_id is None and data is not None and "data_sha256" in tags:
            run.log_dataset(job["dataset"], tags["data_sha256"], data)
        return run

    return make
