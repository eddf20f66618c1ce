"""CUB-200-2011 (Wah et al. 2011) for Table 3, from a local copy.

The user's `path` is the unpacked `CUB_200_2011/` folder, the folder holding it, the archive
`CUB_200_2011.tgz`, or the folder holding that archive (unpacked once into the results' data folder).
The folder has `images/<class dir>/<file>.jpg` and five text files, one line per image id or class:
`images.txt` (<id> <relative path>), `image_class_labels.txt` (<id> <class 1..200>),
`train_test_split.txt` (<id> <1 = train, 0 = test>), `bounding_boxes.txt` (<id> <x> <y> <w> <h>) and
`classes.txt` (<class> <name>). 11,788 images: 5,994 train, 5,794 test.

The index (paths, labels, splits, boxes) is cached as arrays; images are decoded when a batch is drawn
(`Images`), with the paper's augmentation for training: the image resized so that its shorter side is
256/224 of the input size (256 for 224 px, 512 for 448 px), a random square crop of the input size and
a horizontal flip with probability 1/2; for evaluation the central crop. ImageNet normalisation.
"""
from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

FOLDER, ARCHIVE = "CUB_200_2011", "CUB_200_2011.tgz"
# file -> what each line holds after the id (the error messages show it)
FILES = {
    "images.txt": "<id> <relative path>",
    "image_class_labels.txt": "<id> <class 1..200>",
    "train_test_split.txt": "<id> <1 = train, 0 = test>",
    "bounding_boxes.txt": "<id> <x> <y> <width> <height>",
    "classes.txt": "<class> <name>",
}
CLASSES = 200
RESIZE = 256 / 224  # shorter side : crop side (appendix A.6: 224 from 256×S, 448 from 512×S)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, which googlenet's weights expect


class CUBError(ValueError):
    pass


def locate(path: str | Path, unpack_into: Path | None = None) -> tuple[Path, Path | None]:
    """The `CUB_200_2011` folder for a config's path, and the archive it was unpacked from (or None)."""
    path = Path(path)
    if (path / "images.txt").is_file():
        return path, None
    if (path / FOLDER / "images.txt").is_file():
        return path / FOLDER, None
    archive = path if path.is_file() else path / ARCHIVE
    if archive.is_file():
        if unpack_into is None:
            raise CUBError(f"{archive} must be unpacked first (tar xzf {archive})")
        target = Path(unpack_into)
        if not (target / FOLDER / "images.txt").is_file():
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(target, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise CUBError(f"{archive} is not a readable .tgz ({exc}); download it again") from None
            if not (target / FOLDER / "images.txt").is_file():
                raise CUBError(f"{archive} has no {FOLDER}/images.txt; it is not the CUB-200-2011 archive")
        return target / FOLDER, archive
    raise CUBError(f"CUB-200-2011 not found at {path}: expected the folder {FOLDER}/ (with images.txt), the folder "
                   f"holding it, or {ARCHIVE} (set table3.cub.path)")


def read_table(path: Path, kinds: tuple[type, ...]) -> dict[int, tuple]:
    """The lines of one of the five text files as {id: (fields...)}; `kinds` converts the fields after
    the id (the last one takes the rest of the line, so names and paths may hold spaces)."""
    if not path.is_file():
        raise CUBError(f"{path} is missing; CUB_200_2011/ must hold {', '.join(FILES)}")
    out: dict[int, tuple] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=len(kinds))
        try:
            if len(parts) != len(kinds) + 1:
                raise ValueError(f"{len(parts)} fields")
            key, values = int(parts[0]), tuple(k(v) for k, v in zip(kinds, parts[1:]))
        except ValueError:
            raise CUBError(f"{path}:{number}: expected '{FILES[path.name]}', got {line!r}") from None
        if key in out:
            raise CUBError(f"{path}:{number}: id {key} appears twice")
        out[key] = values
    return out


def read_index(root: Path) -> dict[str, np.ndarray]:
    """Every image's relative path, class (0..199), split (1 = train) and box (x, y, w, h), in id order;
    class names. Ids must agree across the files and splits be 0 or 1."""
    root = Path(root)
    images = read_table(root / "images.txt", (str,))
    labels = read_table(root / "image_class_labels.txt", (int,))
    split = read_table(root / "train_test_split.txt", (int,))
    boxes = read_table(root / "bounding_boxes.txt", (float, float, float, float))
    classes = read_table(root / "classes.txt", (str,))
    ids = sorted(images)
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split),
                        ("bounding_boxes.txt", boxes)):
        if set(table) != set(ids):
            odd = sorted(set(table) ^ set(ids))
            raise CUBError(f"{root / name} and {root / 'images.txt'} list different image ids (e.g. {odd[:3]})")
    for i in ids:
        if split[i][0] not in (0, 1):
            raise CUBError(f"{root / 'train_test_split.txt'}: image {i} has split {split[i][0]}; expected 1 (train) or 0 (test)")
        if not 1 <= labels[i][0] <= len(classes):
            raise CUBError(f"{root / 'image_class_labels.txt'}: image {i} has class {labels[i][0]}; "
                           f"classes.txt names 1..{len(classes)}")
    return {"path": np.array([images[i][0] for i in ids]), "y": np.array([labels[i][0] - 1 for i in ids], dtype=np.int64),
            "train": np.array([split[i][0] for i in ids], dtype=np.int64),
            "box": np.array([boxes[i] for i in ids], dtype=np.float32),
            "classes": np.array([classes[c][0] for c in sorted(classes)])}


def build(path: str | Path, validation: int, seed: int, unpack_into: Path,
          progress: Callable[[str], None] = print) -> tuple[dict[str, np.ndarray], dict]:
    """The index split into train (less `validation` training images, drawn with `seed`), val and test,
    as arrays path_/y_/box_<split>, and its description (root, counts, checksums)."""
    from ..io import sha256_file

    root, archive = locate(path, unpack_into)
    index = read_index(root)
    missing = [p for p in index["path"] if not (root / "images" / p).is_file()]
    if missing:
        raise CUBError(f"{len(missing)} images listed in {root / 'images.txt'} are missing, e.g. {root / 'images' / missing[0]}")
    train, test = np.flatnonzero(index["train"] == 1), np.flatnonzero(index["train"] == 0)
    if not 0 < validation < len(train):
        raise CUBError(f"validation {validation} must be between 1 and the {len(train) - 1} training images")
    perm = np.random.default_rng(seed).permutation(train)
    parts = {"train": np.sort(perm[validation:]), "val": np.sort(perm[:validation]), "test": test}
    arrays = {f"{k}_{s}": index[k][i] for s, i in parts.items() for k in ("path", "y", "box")}
    arrays["classes"] = index["classes"]
    progress(f"CUB-200-2011 at {root}: " + ", ".join(f"{s} {len(i)}" for s, i in parts.items()))
    checksums = ({archive.name: sha256_file(archive)} if archive else
                 {name: sha256_file(root / name) for name in FILES})
    return arrays, {"source": "CUB-200-2011", "root": str(root.resolve()), "checksums": checksums,
                    "classes": len(index["classes"])}


class Images:
    """One split's images, decoded when indexed: (n, 3, size, size) float, ImageNet-normalised; with
    `train`, resized so the shorter side is size·256/224, randomly cropped and flipped (torch's global
    generator, so a resumed run draws the same crops), else centrally cropped."""

    def __init__(self, root: str | Path, paths: np.ndarray, size: int, train: bool, threads: int = 4) -> None:
        self.root, self.paths, self.size, self.train, self.threads = Path(root), np.asarray(paths), size, train, threads

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, n: int) -> "Images":
        return Images(self.root, self.paths[:n], self.size, self.train, self.threads)

    def _load(self, path: str, crop: tuple[float, float, bool]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image, read_file
        from torchvision.transforms.v2 import functional as TF

        file = self.root / "images" / path
        try:
            image = decode_image(read_file(str(file)), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as exc:
            raise CUBError(f"{file} is not a readable image ({exc})") from None
        short = round(self.size * RESIZE)
        image = TF.resize(image, short, antialias=True)
        h, w = image.shape[-2:]
        fy, fx, flip = crop
        top, left = round(fy * (h - self.size)), round(fx * (w - self.size))
        image = image[:, top : top + self.size, left : left + self.size]
        return image.flip(-1) if flip else image

    def __getitem__(self, idx) -> torch.Tensor:
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx).reshape(-1)
        if self.train:
            r = torch.rand(len(idx), 3)
            crops = [(float(a), float(b), bool(c < 0.5)) for a, b, c in r.tolist()]
        else:
            crops = [(0.5, 0.5, False)] * len(idx)
        with ThreadPoolExecutor(self.threads) as pool:
            images = list(pool.map(self._load, self.paths[idx], crops))
        x = torch.stack(images).float().div_(255)
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        return (x - mean) / std
