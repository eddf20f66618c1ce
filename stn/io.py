"""Small I/O helpers: atomic writes (a killed job never leaves a file that looks finished)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The file gets the mode an ordinary open() would give it (0666 less the umask; mkstemp's own
    0600 would hide results from the rest of a group sharing a server)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; the rule that writes it has not run") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it and re-run the rule that writes it") from None


def save_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; generate it first (snakemake {path})")
    fix = "delete it and re-run the rule that writes it"
    blob = path.read_bytes()  # read once: hashed and parsed from memory
    sidecar = path.with_suffix(".json")
    if sidecar.exists():  # generated data sets record their sha256 beside them
        expected = read_json(sidecar).get("sha256")
        if expected and sha256_bytes(blob) != expected:
            raise ValueError(f"{path} does not match the sha256 in {sidecar.name} (changed or damaged since it was "
                             f"written); {fix}")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is corrupt or truncated ({exc}); {fix}") from None


def load_torch(path: str | Path, what: str, map_location="cpu"):
    """A checkpoint or model file written by this pipeline, loaded without running code from it; a missing,
    truncated or foreign file is one error naming it and the fix."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; train {what} first")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, pickle's UnpicklingError, EOFError, zipfile errors ...
        raise ValueError(f"{path} is corrupt or not a file this pipeline wrote ({type(exc).__name__}: {first_line(exc)}); "
                         f"delete it and re-run {what}") from None


def first_line(exc: BaseException) -> str:
    """An exception in one short line for an error message: the first line of its text, else its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_array(a: np.ndarray) -> str:
    return sha256_bytes(np.ascontiguousarray(a).tobytes())
