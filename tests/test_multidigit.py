"""Table 2's data (SVHN format 1 on fabricated archives, the MNIST stand-in) and models."""
import io
import tarfile

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from stn.data import sequences, svhn
from stn.models import svhn as zoo
from stn.report.tables import render_table

from helpers import fake_mnist

MAT_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Sun Nov 29 12:00:00 2026 HDF5 schema 1.00 ."


def write_digit_struct(path, records):
    """A digitStruct.mat as SVHN ships it: HDF5 behind a 512-byte user block with a MAT header,
    /digitStruct/{name,bbox} (N, 1) object references into #refs#; a one-digit bbox field is a (1, 1)
    value, an n-digit one (n, 1) references to (1, 1) values."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs, ds = f.create_group("#refs#"), f.create_group("digitStruct")
        ds.attrs["MATLAB_class"] = np.bytes_("struct")
        counter = iter(range(10**6))

        def new(data, cls="double"):
            d = refs.create_dataset(f"r{next(counter)}", data=data)
            d.attrs["MATLAB_class"] = np.bytes_(cls)
            return d.ref

        names, boxes = [], []
        for name, digits in records:
            names.append(new(np.array([[ord(c)] for c in name], dtype=np.uint16), "char"))
            group = refs.create_group(f"g{next(counter)}")
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            for k, field in enumerate(["left", "top", "width", "height", "label"]):
                values = [float(d[k]) for d in digits]
                if len(values) == 1:
                    group.create_dataset(field, data=np.array([[values[0]]]))
                else:
                    group.create_dataset(field, data=np.array([[new(np.array([[v]]))] for v in values], dtype=h5py.ref_dtype))
            boxes.append(group.ref)
        ds.create_dataset("name", data=np.array([[r] for r in names], dtype=h5py.ref_dtype))
        ds.create_dataset("bbox", data=np.array([[r] for r in boxes], dtype=h5py.ref_dtype))
    with open(path, "r+b") as fh:
        fh.write(MAT_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


# (name, [(left, top, width, height, label), ...]): one digit, several, label 10 = 0, a box off the image, six digits
RECORDS = [("1.png", [(10, 5, 8, 20, 7)]),
           ("2.png", [(4, 6, 9, 18, 1), (14, 6, 9, 18, 10), (24, 7, 9, 18, 3)]),
           ("3.png", [(30, -4, 12, 30, 5), (40, 2, 12, 30, 2)]),
           ("4.png", [(2 + 6 * i, 5, 6, 15, i + 1) for i in range(6)])]


def fabricate(root, split="train", records=RECORDS, archive=False):
    folder = root / split
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, _ in records:
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(folder / name)
    write_digit_struct(folder / "digitStruct.mat", records)
    if archive:
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname=split)
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return root


def test_digit_struct_records_one_and_several_digits(tmp_path):
    fabricate(tmp_path)
    recs = svhn.read_digit_struct(tmp_path / "train" / "digitStruct.mat", "x")
    assert [r.name for r in recs] == ["1.png", "2.png", "3.png", "4.png"]
    assert recs[0].labels.tolist() == [7] and recs[0].boxes.tolist() == [[10, 5, 8, 20]]
    assert recs[1].labels.tolist() == [1, 0, 3]  # label 10 is the digit 0
    assert recs[1].boxes[:, 0].tolist() == [4, 14, 24] and recs[1].boxes[2].tolist() == [24, 7, 9, 18]
    assert len(recs[3].labels) == 6


@pytest.mark.parametrize("archive", [False, True])
def test_read_split_crops_drops_long_sequences_and_clamps_boxes(tmp_path, archive):
    fabricate(tmp_path, archive=archive)
    x, y, dropped = svhn.read_split(tmp_path, "train", progress=lambda s: None)
    assert dropped == 1 and y.tolist() == [[7, 10, 10, 10, 10], [1, 0, 3, 10, 10], [5, 2, 10, 10, 10]]
    assert x[64].shape == (3, 3, 64, 64) and x[128].shape == (3, 3, 128, 128) and x[64].dtype == np.uint8
    # boxes off the 48x32 image (top -4, right edge 52, bottom 32) are clamped to it before the 30% expansion
    assert svhn.union_box(np.array([[30, -4, 12, 30], [40, 2, 12, 30]], float), 48, 32) == pytest.approx(
        (30 - 0.15 * 18, 0 - 0.15 * 32, 48 + 0.15 * 18, 32 + 0.15 * 32))


def test_build_splits_validation_and_records_checksums(tmp_path):
    fabricate(tmp_path, "train")
    fabricate(tmp_path, "test", RECORDS[:2], archive=True)
    made = list(svhn.build(tmp_path, use_extra=False, validation=1, seed=0, progress=lambda s: None))
    assert [size for size, _, _ in made] == [64, 128]
    _, arrays, info = made[0]
    assert len(arrays["y_train"]) == 2 and len(arrays["y_val"]) == 1 and len(arrays["y_test"]) == 2
    assert set(info["checksums"]) == {"train/digitStruct.mat", "test.tar.gz"}
    assert info["dropped_over_5_digits"] == {"train": 1, "test": 0}


def test_missing_and_corrupt_svhn_files_are_named(tmp_path):
    with pytest.raises(svhn.SVHNError, match="expected the folder .*train or the archive .*train.tar.gz"):
        list(svhn.build(tmp_path, False, 1, 0))
    with pytest.raises(svhn.SVHNError, match="is not a directory"):
        list(svhn.build(tmp_path / "none", False, 1, 0))
    fabricate(tmp_path)
    mat = tmp_path / "train" / "digitStruct.mat"
    mat.write_bytes(mat.read_bytes()[:2000])  # truncated
    with pytest.raises(svhn.SVHNError, match=r"train/digitStruct.mat is not a readable MATLAB v7.3"):
        svhn.read_split(tmp_path, "train")
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(svhn.SVHNError, match="other.mat has no /digitStruct/name"):
        svhn.read_digit_struct(tmp_path / "other.mat", str(tmp_path / "other.mat"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(svhn.SVHNError, match="train.tar.gz is not a readable .tar.gz"):
        svhn.read_split(tmp_path / "bad", "train")


def test_standin_sequences_are_labelled_in_reading_order_and_deterministic():
    m = fake_mnist(n_train=10_300, n_test=300)
    m["train_images"][:] = 0
    for i in range(10_300):  # a vertical bar whose place says nothing; the label is what we check
        m["train_images"][i, 4:24, 12:16] = 255
    a = sequences.generate(m, 0, {"train": 64, "val": 8, "test": 8}, progress=lambda s: None)
    b = sequences.generate(m, 0, {"train": 64, "val": 8, "test": 8}, progress=lambda s: None)
    np.testing.assert_array_equal(a[128]["x_train"], b[128]["x_train"])
    y, p = a[64]["y_train"], a[64]["params_train"]
    length = p[:, 0].astype(int)
    assert ((y != sequences.BLANK).sum(1) == length).all() and (length >= 1).all() and (length <= 5).all()
    assert all((row[:n] != sequences.BLANK).all() and (row[n:] == sequences.BLANK).all() for row, n in zip(y, length))
    assert a[64]["x_train"].shape == (64, 64, 64) and a[128]["x_train"].shape == (64, 128, 128)
    # the 64px picture fills its canvas; in the 128px set the number lies inside its recorded box
    img, box = a[128]["x_train"][0].astype(float), p[0, 1:]
    assert a[64]["x_train"][0].max() > 200
    inside = img[int(box[1]):int(box[3]) + 1, int(box[0]):int(box[2]) + 1].sum()
    assert inside > 0.5 * img.sum() or sequences.CLUTTER > 0
    # as SVHN's inflated crops: the number's square is about half the canvas, near its middle
    boxes = a[128]["params_train"][:, 1:]
    side, centre = boxes[:, 2] - boxes[:, 0], (boxes[:, :2] + boxes[:, 2:]) / 2
    assert (side >= 52 - 1e-3).all() and (side <= 76 + 1e-3).all() and 56 < side.mean() < 72
    assert np.abs(centre - 64).max() <= 6.4 + 1e-3 and np.abs(centre - 64).max() > 2


def test_sequence_models_shapes_identity_start_and_losses():
    x = torch.rand(2, 1, 64, 64)
    for name in zoo.MODELS:
        torch.manual_seed(0)
        m = zoo.build(name, 1, 64, width=1 / 6, fc=32, loc_filters=4, dropout=0.0, init="he")
        assert m(x).shape == (2, 5, 11)
        if name != "CNN":
            out, theta = m.transform(x)
            assert torch.allclose(out, x, atol=1e-5)  # every transformer starts at the identity
    multi = zoo.build("ST-CNN-Multi", 3, 128, width=1 / 6, fc=32)
    assert len(multi.sts) == 4 and multi(torch.rand(1, 3, 128, 128)).shape == (1, 5, 11)
    with pytest.raises(ValueError, match="unknown Table 2 model 'ST-CNN'"):
        zoo.build("ST-CNN", 1, 64)
    from stn.train import classification_loss, error_rate

    logits = torch.zeros(2, 5, 11)
    logits[0, :, 3] = 10
    y = torch.full((2, 5), 3)
    assert classification_loss(logits, y).item() == pytest.approx(5 * np.log(11) / 2, abs=1e-2)  # summed over positions

    class Fixed(torch.nn.Module):
        def forward(self, inp):
            return logits[: len(inp)]

    # sequence 0 right at every position, sequence 1 wrong everywhere: 50% sequence error
    assert error_rate(Fixed(), torch.zeros(2, 1, 4, 4), y, torch.device("cpu"), False) == 50.0


def test_a_standin_table_keeps_the_papers_svhn_numbers_in_their_own_columns(tmp_path):
    recs = [{"model": "CNN", "dataset": "SEQ128", "seed": 1, "test_error": 20.0}]
    paths = render_table(recs, ["SEQ128"], ["CNN"], "cap", tmp_path, "table2")
    md = paths["md"].read_text()
    assert "| Model | SEQ128 | paper: SVHN 128px |" in md and "| CNN | 20.0 | 5.6 |" in md
    assert "(5.6)" not in md and "not comparable" in md
    row = paths["csv"].read_text().splitlines()[1].split(",")
    assert row[5] == "" and row[-2:] == ["SVHN 128px", "5.6"]
    real = render_table([{"model": "ST-CNN-Multi", "dataset": "SVHN64", "seed": 1, "test_error": 4.1}], ["SVHN64"],
                        ["ST-CNN-Multi"], "cap", tmp_path, "table2")
    assert "| ST-CNN Multi | 4.1 (3.6) |" in real["md"].read_text()
