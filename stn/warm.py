"""Warm starts for `stn` commands: one server imports torch, MLflow and the experiments once and forks a
child per command, so a pipeline job starts in ~0.1 s instead of paying ~6 s of CPU for imports.

A default run starts ~150 `stn` processes; each spent ~6 s of CPU importing torch (1.3 s), torch._dynamo (which
torch.optim imports: 1.2 s), MLflow and its SQL store (2 s) and matplotlib, about 15 of the run's ~150 CPU-minutes.
The Snakefile's `onstart` calls `start()`, which launches `python -m stn.warm` and puts its socket in
STN_WARM_SOCKET for the jobs; `stn <command>` (stn.cli.main) then hands its arguments, working directory,
environment and its stdin/stdout/stderr (as file descriptors) to the server, whose forked child runs the command
exactly as the process would have. The client relays SIGTERM/SIGINT/SIGHUP to the child and exits with its code;
if the client dies, the child's watchdog sees the closed connection and stops the command with SIGTERM.

With no server (STN_WARM_SOCKET unset or unreachable: a Slurm node, a command typed by hand) `stn` runs
in-process as always; so does a command in a Slurm job other than the server's (STN_WARM_SLURM_JOB, set by
`start()`, against the command's SLURM_JOB_ID): a Slurm job on the server's own machine must run inside its
allocation, not in the submitting process's server. STN_WARM=0 switches warm starts off. The server exits
when asked (`stop()`, the Snakefile's onsuccess/onerror), when the process that started it is gone, or after
IDLE_S without commands.

This module imports only the standard library: the client must stay light.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

SOCKET_ENV = "STN_WARM_SOCKET"
SWITCH_ENV = "STN_WARM"  # "0": never use a server
SLURM_ENV = "STN_WARM_SLURM_JOB"  # the Slurm job the server runs in ("" outside Slurm): only its commands use it
IDLE_S = 600.0  # a server with no command for this long exits
# What a command imports, loaded once in the server (each a module whose import costs a job ~0.1 s or more).
PRELOAD = (
    "torch", "torch._dynamo", "torch.optim", "numpy",
    "mlflow", "mlflow.pytorch", "mlflow.models", "mlflow.store.tracking.sqlalchemy_store",
    "matplotlib.pyplot",
    "stn.cli", "stn.train", "stn.tracking", "stn.report.figures", "stn.report.tables",
    "stn.experiments.classification", "stn.experiments.multidigit", "stn.experiments.finegrained",
    "stn.experiments.colocalisation", "stn.experiments.volumetric",
)
_HEADER = struct.Struct("!I")  # the request's JSON length


def socket_path() -> str:
    """A short socket path for this (the serving) process (AF_UNIX paths are limited to ~107 bytes)."""
    return str(Path(tempfile.gettempdir()) / f"stn-warm-{os.getpid()}.sock")


# ---- client ------------------------------------------------------------------------------------------------

def forward(argv: list[str]) -> int | None:
    """Run `stn argv` in the warm server's child and return its exit code; None when there is no server to
    use (the caller then runs the command itself)."""
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get(SWITCH_ENV) == "0":
        return None
    if os.environ.get("SLURM_JOB_ID", "") != os.environ.get(SLURM_ENV, ""):
        return None  # a Slurm job that inherited the submitting Snakemake's server: it runs in its own allocation
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    request = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [_HEADER.pack(len(request)) + request], [0, 1, 2])
    reader = conn.makefile("r")
    started = reader.readline()
    if not started:  # the server closed the connection before forking: run here
        conn.close()
        return None
    pid = json.loads(started)["pid"]

    def relay(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, relay)
    line = reader.readline()
    conn.close()
    if not line:
        print(f"stn: the warm server's process {pid} ended without an exit code (killed?)", file=sys.stderr)
        return 1
    return int(json.loads(line)["exit"])


# ---- server ------------------------------------------------------------------------------------------------

def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < _HEADER.size:
        raise ConnectionError("a request without its header")
    (size,) = _HEADER.unpack(data[:_HEADER.size])
    body = bytearray(data[_HEADER.size:])
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the request was cut short")
        body += chunk
    return json.loads(body), list(fds)


def _child(conn: socket.socket, request: dict, fds: list[int], added_env: dict[str, str]) -> None:
    """In the forked child: become the client's process (its descriptors, directory and environment), run the
    command, send back its exit code. Never returns."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        env = {**added_env, **request["env"]}
        for name in (SOCKET_ENV, SLURM_ENV):  # the command runs here; nothing in it may forward again
            env.pop(name, None)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["stn", *request["argv"]]
        conn.sendall((json.dumps({"pid": os.getpid()}) + "\n").encode())

        def watchdog():  # the client died (kill -9): stop the command as Snakemake would have
            try:
                gone = conn.recv(1) == b""
            except OSError:
                gone = True
            if gone:
                os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watchdog, daemon=True).start()
        from .cli import main

        code = main(request["argv"]) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (the command's own traceback, as a fresh process would print it)
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            print(_usage(), file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall((json.dumps({"exit": code}) + "\n").encode())
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


def _usage() -> str:
    """This child's CPU time and peak memory: Snakemake's benchmark files measure the client's process tree,
    which holds only the client, so a warm job's own cost is written to its log instead."""
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return (f"[{time.strftime('%H:%M:%S')}] stn warm child {os.getpid()}: CPU {use.ru_utime + use.ru_stime:.1f} s, "
            f"peak memory {use.ru_maxrss / 1024:.0f} MiB (its share of the server's pages included)")


def serve(path: str, owner: int | None = None, idle_s: float = IDLE_S) -> None:
    """Preload, then fork a child per request on the socket at `path` until stopped, idle for `idle_s`, or
    `owner` (a pid) is gone."""
    import importlib

    before = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    from .experiments import code_version

    code_version()  # hashed now, of the code loaded here and run by every child, not of later edits on disk
    added_env = {k: v for k, v in os.environ.items() if before.get(k) != v}  # what the imports set (stn.tracking)
    if threading.active_count() != 1:
        raise RuntimeError(f"the warm server has {threading.active_count()} threads after its imports; forking is unsafe")
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    server.settimeout(1.0)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    children: set[int] = set()
    last = time.monotonic()
    print(f"[{time.strftime('%H:%M:%S')}] stn warm server {os.getpid()} ready on {path}", flush=True)
    try:
        while not stop:
            for pid in list(children):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    children.discard(pid)
            if owner is not None and not _alive(owner):
                break
            if not children and time.monotonic() - last > idle_s:
                break
            try:
                conn, _ = server.accept()
            except (TimeoutError, socket.timeout):
                continue
            last = time.monotonic()
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError) as exc:
                print(f"bad request: {exc}", flush=True)
                conn.close()
                continue
            if request.get("stop"):
                conn.close()
                break
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                server.close()
                _child(conn, request, fds, added_env)
            children.add(pid)
            print(f"[{time.strftime('%H:%M:%S')}] {pid}: stn {' '.join(request['argv'])}", flush=True)
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        server.close()
        if os.path.exists(path):
            os.unlink(path)
        print(f"[{time.strftime('%H:%M:%S')}] stn warm server {os.getpid()} stopped", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- lifecycle (the Snakefile's onstart / onsuccess / onerror) ----------------------------------------------

def start(log: str | Path, wait_s: float = 120.0) -> str | None:
    """Launch a server owned by this process, wait until it accepts, and export its socket to the commands this
    process starts. Returns the socket path, or None (warm starts switched off, or the server did not come up:
    the commands then start cold, as before)."""
    if os.environ.get(SWITCH_ENV) == "0":
        return None
    path = socket_path()
    try:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            proc = subprocess.Popen([sys.executable, "-m", "stn.warm", path, str(os.getpid())], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        print(f"warning: no warm server ({exc}); every job imports torch itself", file=sys.stderr)
        return None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(path):
            os.environ[SOCKET_ENV] = path
            os.environ[SLURM_ENV] = os.environ.get("SLURM_JOB_ID", "")
            return path
        time.sleep(0.1)
    proc.kill()
    print(f"warning: the warm server did not start (see {log}); every job imports torch itself", file=sys.stderr)
    return None


def stop(path: str | None = None) -> None:
    """Ask the server at `path` (default: this process's) to exit; its running commands finish on their own."""
    path = path or os.environ.pop(SOCKET_ENV, None)
    os.environ.pop(SLURM_ENV, None)
    if not path:
        return
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = json.dumps({"stop": True}).encode()
        socket.send_fds(conn, [_HEADER.pack(len(request)) + request], [])
    except OSError:
        pass
    finally:
        conn.close()


if __name__ == "__main__":  # python -m stn.warm SOCKET [OWNER_PID]
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
