"""Several training jobs on a machine's GPUs: each job takes the GPU that the fewest others hold.

Snakemake runs as many training jobs at once as `--resources gpu=N` allows (profiles/default sets 1), but
it does not say which GPU a job should use. With N = k × (GPUs on the node), `claim` spreads the jobs
evenly: a job holds an exclusive lock on a file `gpu<i>@<host>.<pid>` in a directory shared by the jobs
of one results tree for as long as it runs (the lock dies with the process, so a killed job frees its
GPU), and a new job takes the GPU with the fewest live locks on its own host, the lowest index on a tie.
Under Slurm each job sees only the GPU(s) it was given (CUDA_VISIBLE_DEVICES), so there is nothing to pick.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO


def holders(lock_dir: Path, count: int, host: str | None = None) -> list[int]:
    """Live locks per GPU index (0..count-1) on `host`; stale lock files (their process is gone) are removed."""
    host = host or socket.gethostname()
    held = [0] * count
    for path in lock_dir.glob(f"gpu*@{host}.*"):
        try:
            index = int(path.name[3:].split("@", 1)[0])
        except ValueError:
            continue
        with open(path, "a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a running job holds it
                if index < count:
                    held[index] += 1
                continue
        path.unlink(missing_ok=True)
    return held


def claim(lock_dir: str | Path, count: int) -> tuple[int, IO]:
    """The GPU index (0..count-1) for this process and the open lock file that holds it: keep the file
    open while the GPU is in use (closing it, or the process ending, releases the GPU)."""
    if count < 1:
        raise ValueError(f"no GPU to claim (count {count})")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "pick.lock", "a") as guard:  # one picker at a time, or two jobs pick the same GPU
        fcntl.flock(guard, fcntl.LOCK_EX)
        held = holders(lock_dir, count)
        best = min(range(count), key=lambda i: (held[i], i))
        handle = open(lock_dir / f"gpu{best}@{socket.gethostname()}.{os.getpid()}", "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
    return best, handle
