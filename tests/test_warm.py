"""Warm starts (stn/warm.py): a server's forked child runs `stn` commands as the process itself would."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stn import warm

ROOT = Path(__file__).resolve().parents[1]
STN = [sys.executable, "-m", "stn.cli"]


def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _start(path: Path, log: Path, owner: int | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "stn.warm", str(path)] + ([str(owner)] if owner else [])
    proc = subprocess.Popen(args, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    _wait(lambda: path.exists() or proc.poll() is not None, 120, "the server's socket")
    assert proc.poll() is None, log.read_text()
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    path, log = tmp / "s.sock", tmp / "server.log"
    proc = _start(path, log)
    yield path, log
    warm.stop(str(path))
    proc.wait(30)


def _env(**extra):
    drop = (warm.SOCKET_ENV, warm.SWITCH_ENV, warm.SLURM_ENV, "SLURM_JOB_ID")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **extra}


def _stn(args, **env):
    return subprocess.run(STN + args, cwd=ROOT, capture_output=True, text=True, env=_env(**env), timeout=120)


def test_a_command_runs_in_the_servers_child_with_the_clients_output_and_exit_code(server, tmp_path):
    path, log = server
    for args in (["run", "--job", str(tmp_path / "missing" / "job.json")], ["--help"]):
        cold = _stn(args)
        hot = _stn(args, **{warm.SOCKET_ENV: str(path)})
        *err, usage = hot.stderr.splitlines(keepends=True)
        assert (hot.returncode, hot.stdout, "".join(err)) == (cold.returncode, cold.stdout, cold.stderr)
        assert "stn warm child" in usage and "peak memory" in usage  # its own cost, for the job log
    assert cold.returncode == 0 and "usage: stn" in cold.stdout  # --help
    assert f"stn run --job {tmp_path / 'missing' / 'job.json'}" in log.read_text()  # the server ran it
    assert _stn(["run", "--job", "x.json"]).returncode == 1


def test_without_a_reachable_server_or_with_warm_starts_off_the_command_runs_here(server, tmp_path):
    path, log = server
    before = log.read_text()
    args = ["run", "--job", str(tmp_path / "off" / "job.json")]
    gone = _stn(args, **{warm.SOCKET_ENV: str(tmp_path / "no.sock")})
    off = _stn(args, **{warm.SOCKET_ENV: str(path), warm.SWITCH_ENV: "0"})
    # a Slurm job that inherited the socket of a server outside it (a one-node Slurm, a login node that runs jobs)
    slurm = _stn(args, **{warm.SOCKET_ENV: str(path), warm.SLURM_ENV: "", "SLURM_JOB_ID": "4242"})
    assert gone.returncode == off.returncode == slurm.returncode == 1 and "does not exist" in gone.stderr
    assert gone.stderr == off.stderr == slurm.stderr
    assert log.read_text() == before  # none reached the server
    inside = _stn(args, **{warm.SOCKET_ENV: str(path), warm.SLURM_ENV: "4242", "SLURM_JOB_ID": "4242"})
    assert inside.returncode == 1 and "stn warm child" in inside.stderr  # the server's own Slurm job: it forwards


def _long_job(smoke: Path, tmp: Path) -> Path:
    job = json.loads((smoke / "runs" / "table1" / "R" / "FCN" / "seed1" / "job.json").read_text())
    job["settings"].update(iterations=10**7, eval_every=10**6, checkpoint_every=10**6)
    path = tmp / "run" / "job.json"
    path.parent.mkdir()
    path.write_text(json.dumps(job))
    return path


def _client(smoke, job, path, out):
    args = ["run", "--job", str(job), "--input", f"data={smoke / 'data' / 'R.npz'}",
            f"params={smoke / 'tables' / 'table1_params.json'}", f"experiments={smoke / 'mlflow' / 'experiments' / 'table1.json'}"]
    return subprocess.Popen(STN + args, cwd=ROOT, stdout=open(out, "w"), stderr=subprocess.STDOUT,
                            env=_env(**{warm.SOCKET_ENV: str(path)}))


def _child_pid(log: Path, job: Path) -> int:
    line = next(l for l in log.read_text().splitlines() if f"--job {job}" in l)
    return int(line.split("] ")[1].split(":")[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _training(server, smoke, tmp):
    """A long training run started through the server, once it is iterating: (job.json, its output, the
    client process, the child's pid)."""
    path, log = server
    job, out = _long_job(smoke, tmp), tmp / "out.log"
    client = _client(smoke, job, path, out)
    _wait(lambda: "iteration" in out.read_text(), 120, "the first iterations")
    return job, out, client, _child_pid(log, job)


@pytest.mark.slow  # needs the smoke run (conftest)
def test_sigterm_to_the_client_stops_the_command_as_it_would_stop_a_process(server, smoke, tmp_path):
    job, out, client, child = _training(server, smoke, tmp_path)
    client.send_signal(signal.SIGTERM)
    assert client.wait(60) == 1
    assert "terminated (SIGTERM)" in out.read_text()
    assert not (job.parent / "metrics.json").exists()
    _wait(lambda: not _alive(child), 30, "the child to end")


@pytest.mark.slow  # needs the smoke run (conftest)
def test_a_killed_client_takes_its_command_with_it(server, smoke, tmp_path):
    _, out, client, child = _training(server, smoke, tmp_path)
    client.kill()
    client.wait(30)
    _wait(lambda: not _alive(child), 30, "the orphaned command to stop")
    assert "terminated (SIGTERM)" in out.read_text()
def test_the_server_exits_when_its_owner_is_gone_and_removes_its_socket(tmp_path):
    owner = subprocess.Popen(["sleep", "600"])
    path = tmp_path / "o.sock"
    proc = _start(path, tmp_path / "o.log", owner.pid)
    owner.kill()
    owner.wait()
    assert proc.wait(30) == 0
    assert not path.exists() and "stopped" in (tmp_path / "o.log").read_text()
