"""Several training jobs sharing a node's GPUs (stn/gpus.py): each takes the least-held GPU, and a job
that dies frees its GPU. Real processes hold the locks, as Snakemake's jobs would."""
import subprocess
import sys

import pytest

from stn import gpus

# stn/gpus.py loaded on its own: importing the stn package (and torch) in each process would take seconds
HOLD = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('gpus', sys.argv[3]); "
        "gpus = importlib.util.module_from_spec(spec); spec.loader.exec_module(gpus); "
        "index, lock = gpus.claim(sys.argv[1], int(sys.argv[2])); print(index, flush=True); sys.stdin.read()")


def _job(lock_dir, count):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_dir), str(count), gpus.__file__], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_jobs_spread_over_gpus_and_a_dead_job_frees_its_gpu(tmp_path):
    jobs = []
    try:
        for _ in range(5):
            jobs.append(_job(tmp_path, 3))
        assert [index for _, index in jobs] == [0, 1, 2, 0, 1]
        assert gpus.holders(tmp_path, 3) == [2, 2, 1]
        killed = jobs.pop(2)[0]  # the only job on GPU 2
        killed.kill()
        killed.wait()
        jobs.append(_job(tmp_path, 3))
        assert jobs[-1][1] == 2
        assert gpus.holders(tmp_path, 3) == [2, 2, 1]
        assert len(list(tmp_path.glob("gpu*@*"))) == 5  # the dead job's lock file was removed
    finally:
        for proc, _ in jobs:
            proc.stdin.close()
            proc.wait(timeout=30)
    assert gpus.holders(tmp_path, 3) == [0, 0, 0]


def test_other_hosts_locks_do_not_count(tmp_path):
    proc, index = _job(tmp_path, 2)
    try:
        assert index == 0
        assert gpus.holders(tmp_path, 2, host="another-node") == [0, 0]
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_no_gpu_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no GPU"):
        gpus.claim(tmp_path, 0)
