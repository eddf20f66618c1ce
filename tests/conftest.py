import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _tracking_uri_restored():
    """mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ (for subprocesses), which is where
    stn.tracking reads a user's server: left behind by one test, it sent every later test's runs to that test's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before and "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets the variable


@pytest.fixture
def impls():
    """Sampler implementations usable on the CPU here (the compiled one must be built for CI)."""
    from stn import ops

    return [i for i, why in ops.available_impls("cpu").items() if why is None]


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The smoke config run locally through Snakemake into a temporary results directory (once per session:
    tests/test_pipeline.py checks it, tests/test_slurm.py compares a Slurm run with it)."""
    results = tmp_path_factory.mktemp("smoke") / "results"
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml",
         "--config", f"results={results}"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800, preexec_fn=lambda: os.umask(0o022),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results
