"""Build and load the compiled samplers (C++ CPU, and CUDA where nvcc exists).

The extension is compiled once, by `python -m stn.ops.build` (or `stn build-ext`), into a cache
directory keyed by a hash of the sources, flags and torch version; a file lock makes concurrent
builds wait for each other instead of racing. Importing `stn` never compiles: if no build for
the current sources exists, the compiled implementations are reported unavailable with the
reason and the command that fixes it.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
NAME = "stn_ops"
BUILD_COMMAND = "python -m stn.ops.build"
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # used only when no GPU is visible to detect the arch from


def cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and Path("/usr/local/cuda/bin/nvcc").exists():
        home = "/usr/local/cuda"
    if home and Path(home, "bin", "nvcc").exists() and torch.version.cuda is not None:
        return home
    return None


def _sources(with_cuda: bool) -> list[Path]:
    """Device-neutral C++ (autograd.cpp), the CPU kernels and, with CUDA, the CUDA kernels."""
    files = sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("cpu/*.cpp"))
    if with_cuda:
        files += sorted(CSRC.glob("cuda/*.cu"))
    return files


def _flags(with_cuda: bool) -> dict:
    flags = {"extra_cflags": ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"], "extra_ldflags": ["-fopenmp"]}
    if with_cuda:
        flags["extra_cuda_cflags"] = ["-O3", "-lineinfo"]
        flags["arch_list"] = os.environ.get("TORCH_CUDA_ARCH_LIST") or (
            "" if torch.cuda.is_available() else DEFAULT_CUDA_ARCHS
        )
    return flags


def build_key(with_cuda: bool) -> str:
    h = hashlib.sha256()
    for f in _sources(with_cuda) + sorted(CSRC.glob("*.h")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    h.update(repr(_flags(with_cuda)).encode())
    h.update(torch.__version__.encode())
    return f"{'cuda' if with_cuda else 'cpu'}-{h.hexdigest()[:16]}"


def cache_root() -> Path:
    root = os.environ.get("STN_EXT_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stn" / "ext" / f"torch-{torch.__version__}"


def library_path(with_cuda: bool) -> Path:
    return cache_root() / build_key(with_cuda) / f"{NAME}.so"


@contextmanager
def _lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build(with_cuda: bool | None = None, verbose: bool = True) -> Path:
    """Compile the extension if this configuration has not been built; return the library's path."""
    if with_cuda is None:
        with_cuda = cuda_home() is not None
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home()
    from torch.utils import cpp_extension

    if with_cuda:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # fixed at its import; it may predate us
    target = library_path(with_cuda)
    with _lock(cache_root()):
        if target.exists():
            return target
        flags = _flags(with_cuda)
        env_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if with_cuda:
            if flags["arch_list"]:
                os.environ["TORCH_CUDA_ARCH_LIST"] = flags["arch_list"]
        staging = target.parent.with_name(target.parent.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            cpp_extension.load(
                name=NAME,
                sources=[str(s) for s in _sources(with_cuda)],
                extra_cflags=flags["extra_cflags"],
                extra_ldflags=flags["extra_ldflags"],
                extra_cuda_cflags=flags.get("extra_cuda_cflags"),
                extra_include_paths=[str(CSRC)],
                build_directory=str(staging),
                with_cuda=with_cuda,
                is_python_module=False,
                verbose=verbose,
            )
        finally:
            if env_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = env_arch
        staging.rename(target.parent)  # atomic: a half-written build never looks finished
        _state.clear()
        return target


@dataclass
class ExtensionState:
    loaded: bool
    has_cuda: bool
    reason: str  # why it is not loaded / has no CUDA part; empty when fully available


_state: dict[str, ExtensionState] = {}


def state() -> ExtensionState:
    """Load the newest matching build once per process and report what it provides."""
    if "s" in _state:
        return _state["s"]
    if os.environ.get("STN_DISABLE_EXTENSION"):
        s = ExtensionState(False, False, "disabled by STN_DISABLE_EXTENSION")
    else:
        s = _load()
    _state["s"] = s
    return s


def _load() -> ExtensionState:
    candidates = [(True, library_path(True)), (False, library_path(False))] if cuda_home() else [(False, library_path(False))]
    for with_cuda, path in candidates:
        if path.exists():
            try:
                if not hasattr(torch.ops.stn, "sample_forward"):
                    torch.ops.load_library(str(path))
            except (OSError, RuntimeError) as exc:
                return ExtensionState(False, False, f"failed to load {path}: {exc}; rebuild with `{BUILD_COMMAND}`")
            from . import registration

            registration.register()
            reason = "" if with_cuda else "the extension was built without CUDA (no nvcc found at build time)"
            return ExtensionState(True, with_cuda, reason)
    return ExtensionState(
        False, False, f"the C++/CUDA extension is not built for these sources (looked in {cache_root()}); run `{BUILD_COMMAND}`"
    )
