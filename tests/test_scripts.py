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
