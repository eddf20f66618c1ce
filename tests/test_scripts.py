"""The helper scripts under scripts/ (run on GPU machines, which CI lacks) still work here."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_smoke_trains_every_model_on_the_requested_device():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "scripts/train_smoke.py", "cpu"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600, check=True).stdout
    rows = re.findall(r"^(\S+): device (\w+), sampler (\w+), test error ([\d.]+)%", out, re.M)
    assert [r[0] for r in rows] == ["ST-CNN-Aff", "2xST-FCN-TPS", "ST3D"]
    assert all(r[1] == "cpu" for r in rows)
    assert all(0 <= float(r[3]) <= 100 for r in rows)


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", "scripts/gpu_check.sh"], cwd=ROOT, check=True)


def test_gpu_check_keeps_to_its_budget_and_names_every_step(tmp_path):
    """With a stand-in interpreter whose training benchmark hangs: every step before it passes, it is stopped at
    what is left of GPU_CHECK_SECONDS, the ones after it are skipped, and the summary names all of them."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\ncase "$*" in *"stn.bench train"*) sleep 60;; esac\necho "ran: $*"\n')
    fake.chmod(0o755)
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHON": str(fake), "GPU_CHECK_SECONDS": "16"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(logs)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    summary = [line.split("[")[0].split(" (")[0].strip() for line in (logs / "summary.txt").read_text().splitlines()]
    assert summary[:3] == ["ok    build", "ok    CUDA tests", "TIMEOUT Table 1's protocol in GPU-hours"]
    assert summary[3:13] == ["SKIP  Table 1's CNNs with cuDNN autotuning", "SKIP  jobs sharing the GPU, whole-step CUDA graphs",
                             "SKIP  runs sharing the GPU on CUDA streams of one job, whole-step CUDA graphs",
                             "SKIP  jobs sharing the GPU",
                             "SKIP  sampler bench N=256", "SKIP  sampler bench N=16384",
                             "SKIP  torch.compile reduce-overhead against eager", "SKIP  training on the GPU",
                             "SKIP  sampler bench, the CPU bar's cases", "SKIP  pooling against torch's"]
    assert "ran: -m pytest -q -rs -p no:cacheprovider -n 4 -m cuda" in (logs / "tests.log").read_text()
    assert len(list(logs.iterdir())) <= 8


def test_setup_refuses_an_unsupported_python_before_installing_anything(tmp_path):
    fake = tmp_path / "python3.10"  # answers --version, fails every -c check as a 3.10 would fail the version test
    fake.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "Python 3.10.0"; else exit 1; fi\n')
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "setup.sh")], env={**os.environ, "PYTHON": str(fake)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "needs Python 3.11 or 3.12" in proc.stderr and "is Python 3.10.0" in proc.stderr
