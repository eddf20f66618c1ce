"""SVHN format 1 ("full numbers", Netzer et al. 2011) for Table 2, from a local copy.

The user's `path` holds `train/`, `test/` (and optionally `extra/`) unpacked, or the archives
`train.tar.gz`, `test.tar.gz`, `extra.tar.gz` beside each other. Each split has `1.png ... N.png` and
`digitStruct.mat`, a MATLAB v7.3 file (HDF5 behind a 512-byte user block): `/digitStruct/name` and
`/digitStruct/bbox` are (N, 1) object references; a bbox group holds `height`, `left`, `top`,
`width` and `label`, each a (1, 1) value for a one-digit image or (n, 1) references to (1, 1) values
for n digits. Label 10 is the digit 0.

Preprocessing (Goodfellow et al. 2013, which the paper follows): the union of the digit boxes,
expanded by 30% in x and y, cropped and resized to 64×64 ("64px"); the "128px" set takes a square
region twice the side of the 64px crop's longer side around the same centre (zero outside the image),
resized to 128×128, so the number fills about the middle half (docs/CHOICES.md). Sequences longer
than 5 digits are dropped and counted. Labels: 5 positions, class 10 = no digit.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

MAX_DIGITS = 5
BLANK = 10  # the class of an empty position
FIELDS = ("height", "left", "top", "width", "label")
EXPAND = 0.3


class SVHNError(ValueError):
    pass


@dataclass
class Record:
    name: str
    boxes: np.ndarray  # (n, 4) left, top, width, height in pixels, as stored
    labels: np.ndarray  # (n,) 0-9 (10 already mapped to 0)


def read_digit_struct(source, where: str) -> list[Record]:
    """Every record of a digitStruct.mat (a path or a binary file object); `where` names it in errors."""
    import h5py

    try:
        f = h5py.File(source, "r")
    except OSError as exc:
        raise SVHNError(f"{where} is not a readable MATLAB v7.3 (HDF5) file ({exc}); re-extract it from the SVHN archive") from None
    with f:
        try:
            names, boxes = f["digitStruct"]["name"], f["digitStruct"]["bbox"]
        except KeyError:
            raise SVHNError(f"{where} has no /digitStruct/name and /digitStruct/bbox; it is not SVHN's digitStruct.mat") from None
        if names.shape != boxes.shape or names.ndim != 2 or 1 not in names.shape:
            raise SVHNError(f"{where}: /digitStruct/name {names.shape} and /digitStruct/bbox {boxes.shape} "
                            f"must both be (N, 1) arrays of references")
        out = []
        for i, (name_ref, box_ref) in enumerate(zip(names[()].reshape(-1), boxes[()].reshape(-1))):
            try:
                name = "".join(chr(int(c)) for c in f[name_ref][()].reshape(-1))
                group = f[box_ref]
                values = {k: _values(f, group[k]) for k in FIELDS}
            except (KeyError, ValueError, TypeError) as exc:
                raise SVHNError(f"{where}: record {i + 1} is malformed ({exc}); expected a name and a bbox group with "
                                f"{', '.join(FIELDS)}") from None
            n = len(values["label"])
            if any(len(v) != n for v in values.values()):
                raise SVHNError(f"{where}: record {i + 1} ({name}) has fields of different lengths")
            labels = np.array(values["label"], dtype=np.int64) % 10
            box = np.stack([values["left"], values["top"], values["width"], values["height"]], 1).astype(np.float64)
            out.append(Record(name, box, labels))
    return out


def _values(f, dataset) -> list[float]:
    """A bbox field: (1, 1) value for one digit, (n, 1) references to (1, 1) values for several (the trap)."""
    data = dataset[()]
    if dataset.dtype.kind == "O":
        return [float(np.asarray(f[r][()]).reshape(-1)[0]) for r in data.reshape(-1)]
    return [float(v) for v in np.asarray(data).reshape(-1)]


def union_box(boxes: np.ndarray, width: int, height: int, expand: float = EXPAND) -> tuple[float, float, float, float]:
    """The digit boxes clamped to the image, their union expanded by `expand` in x and y: (x0, y0, x1, y1)."""
    x0 = np.clip(boxes[:, 0], 0, width).min()
    y0 = np.clip(boxes[:, 1], 0, height).min()
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width).max()
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height).max()
    dx, dy = (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def crops(image: np.ndarray, boxes: np.ndarray) -> dict[int, np.ndarray]:
    """The 64px crop (expanded union box, resized) and the 128px inflated crop of one (H, W, 3) uint8 image."""
    from PIL import Image

    h, w = image.shape[:2]
    x0, y0, x1, y1 = union_box(boxes, w, h)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, 2 * max(x1 - x0, y1 - y0)
    pil = Image.fromarray(image)
    out = {64: pil.crop((round(x0), round(y0), round(x1), round(y1))).resize((64, 64), Image.BILINEAR),
           128: pil.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
           .resize((128, 128), Image.BILINEAR)}
    return {k: np.asarray(v.convert("RGB"), dtype=np.uint8) for k, v in out.items()}


def sequence_labels(labels: np.ndarray) -> np.ndarray:
    y = np.full(MAX_DIGITS, BLANK, dtype=np.int64)
    y[: len(labels)] = labels
    return y


class _Split:
    """One split's files, from an unpacked folder or read straight out of its .tar.gz."""

    def __init__(self, root: Path, split: str) -> None:
        self.folder, self.archive = root / split, root / f"{split}.tar.gz"
        if self.folder.is_dir():
            self.tar = None
            self.where = self.folder
        elif self.archive.is_file():
            try:
                self.tar = tarfile.open(self.archive, "r:gz")
                self.members = {m.name.split("/", 1)[-1]: m for m in self.tar.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise SVHNError(f"{self.archive} is not a readable .tar.gz ({exc}); download it again") from None
            self.where = self.archive
        else:
            raise SVHNError(f"SVHN split {split!r} not found: expected the folder {self.folder} or the archive {self.archive} "
                            f"(set table2.svhn.path to the directory holding them)")

    def open(self, name: str):
        if self.tar is None:
            path = self.folder / name
            if not path.is_file():
                raise SVHNError(f"{path} is missing (listed in {self.folder / 'digitStruct.mat'})")
            return open(path, "rb")
        if name not in self.members:
            raise SVHNError(f"{self.archive} has no {name}")
        return io.BytesIO(self.tar.extractfile(self.members[name]).read())

    def records(self) -> list[Record]:
        with self.open("digitStruct.mat") as fh:
            return read_digit_struct(fh, f"{self.archive}:digitStruct.mat" if self.tar else f"{self.folder}/digitStruct.mat")


def read_split(root: Path, split: str, progress: Callable[[str], None] = print) -> tuple[dict[int, np.ndarray], np.ndarray, int]:
    """Crops at 64 and 128 px (N, 3, S, S) uint8, labels (N, 5) and the number of sequences over 5 digits dropped."""
    from PIL import Image

    s = _Split(Path(root), split)
    records = s.records()
    out = {64: [], 128: []}
    labels, dropped = [], 0
    for i, r in enumerate(records):
        if len(r.labels) > MAX_DIGITS:
            dropped += 1
            continue
        with s.open(r.name) as fh:
            try:
                image = np.asarray(Image.open(fh).convert("RGB"))
            except OSError as exc:
                raise SVHNError(f"{s.where}/{r.name} is not a readable PNG ({exc})") from None
        for size, crop in crops(image, r.boxes).items():
            out[size].append(crop.transpose(2, 0, 1))
        labels.append(sequence_labels(r.labels))
        if (i + 1) % 2000 == 0:
            progress(f"SVHN {split}: {i + 1}/{len(records)}")
    return {k: np.stack(v) for k, v in out.items()}, np.stack(labels), dropped


def archive_checksums(root: Path, splits: list[str]) -> dict[str, str]:
    """sha256 of each split's archive where the user has it, else of its digitStruct.mat."""
    from ..io import sha256_file

    out = {}
    for split in splits:
        archive = Path(root) / f"{split}.tar.gz"
        path = archive if archive.is_file() else Path(root) / split / "digitStruct.mat"
        out[str(path.name if path == archive else f"{split}/digitStruct.mat")] = sha256_file(path)
    return out


def build(root: Path, use_extra: bool, validation: int, seed: int,
          progress: Callable[[str], None] = print) -> Iterator[tuple[int, dict[str, np.ndarray], dict]]:
    """The 64px and 128px data sets: train (less `validation` images, drawn with `seed`), val, test; with
    `use_extra`, the 202k `extra` images join train. Yields (size, arrays, info) per size."""
    root = Path(root)
    if not root.is_dir():
        raise SVHNError(f"table2.svhn.path {root} is not a directory; point it at the folder holding SVHN's "
                        f"train/ and test/ (or train.tar.gz and test.tar.gz)")
    splits = ["train", "test"] + (["extra"] if use_extra else [])
    read = {split: read_split(root, split, progress) for split in splits}
    if use_extra:
        (xe, ye, de), (xt, yt, dt) = read.pop("extra"), read["train"]
        read["train"] = ({k: np.concatenate([xt[k], xe[k]]) for k in xt}, np.concatenate([yt, ye]), dt + de)
    (x_train, y_train, dropped_train), (x_test, y_test, dropped_test) = read["train"], read["test"]
    n = len(y_train)
    if validation >= n:
        raise SVHNError(f"validation {validation} must be smaller than the {n} training images")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:validation], perm[validation:]
    info = {"source": str(root), "use_extra": use_extra, "checksums": archive_checksums(root, splits),
            "dropped_over_5_digits": {"train": dropped_train, "test": dropped_test}}
    for size in (64, 128):
        arrays = {"x_train": x_train[size][train], "y_train": y_train[train], "x_val": x_train[size][val],
                  "y_val": y_train[val], "x_test": x_test[size], "y_test": y_test}
        yield size, arrays, info
