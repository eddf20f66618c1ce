"""Table 3's data (CUB-200-2011 on a fabricated archive, the MNIST-parts stand-in), models and measures."""
import tarfile

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg

from stn.data import cub, parts
from stn.experiments import finegrained
from stn.models import cub as zoo
from stn.modules import param_groups
from stn.paper import paper_number, registry
from stn.report.tables import render_table

from helpers import fake_mnist

# id -> (class dir, class 1..200, train?, (x, y, w, h), image (H, W))
IMAGES = {1: ("001.Black_footed_Albatross", 1, 1, (2, 3, 20, 10), (30, 40)),
          2: ("001.Black_footed_Albatross", 1, 0, (0, 0, 5, 5), (24, 24)),
          3: ("002.Laysan_Albatross", 2, 1, (1, 1, 10, 12), (40, 20)),
          4: ("002.Laysan_Albatross", 2, 1, (4, 4, 8, 8), (20, 36)),
          5: ("003.Sooty_Albatross", 3, 0, (3, 2, 9, 9), (28, 28))}


def fabricate(root, images=IMAGES, archive=False):
    """CUB_200_2011/ as the archive unpacks: images/<class dir>/<file>.jpg and the five text files."""
    folder = root / cub.FOLDER
    classes = sorted({(c, d) for d, c, *_ in images.values()})
    lines = {name: [] for name in cub.FILES}
    for i, (d, c, train, box, (h, w)) in images.items():
        rel = f"{d}/{d.split('.')[1]}_{i:04d}.jpg"
        (folder / "images" / d).mkdir(parents=True, exist_ok=True)
        image = torch.zeros(3, h, w, dtype=torch.uint8)
        image[c % 3] = 40 * c  # the class shows in one channel's brightness
        write_jpeg(image, str(folder / "images" / rel), quality=95)
        lines["images.txt"].append(f"{i} {rel}")
        lines["image_class_labels.txt"].append(f"{i} {c}")
        lines["train_test_split.txt"].append(f"{i} {train}")
        lines["bounding_boxes.txt"].append(f"{i} " + " ".join(f"{v:.1f}" for v in box))
    lines["classes.txt"] = [f"{c} {d}" for c, d in classes]
    for name, rows in lines.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    if archive:
        with tarfile.open(root / cub.ARCHIVE, "w:gz") as tar:
            tar.add(folder, arcname=cub.FOLDER)
        import shutil

        shutil.rmtree(folder)
    return root


def test_index_reads_splits_labels_boxes_and_class_names(tmp_path):
    index = cub.read_index(fabricate(tmp_path) / cub.FOLDER)
    np.testing.assert_array_equal(index["y"], [0, 0, 1, 1, 2])  # classes 1..200 become 0..199
    np.testing.assert_array_equal(index["train"], [1, 0, 1, 1, 0])
    np.testing.assert_allclose(index["box"][2], (1, 1, 10, 12))
    assert index["path"][3] == "002.Laysan_Albatross/Laysan_Albatross_0004.jpg"
    assert list(index["classes"]) == ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


@pytest.mark.parametrize("archive", [False, True])
def test_build_holds_out_validation_and_records_checksums(tmp_path, archive):
    fabricate(tmp_path, archive=archive)
    arrays, info = cub.build(tmp_path, 1, 0, tmp_path / "unpacked", progress=lambda s: None)
    assert len(arrays["y_train"]) == 2 and len(arrays["y_val"]) == 1 and len(arrays["y_test"]) == 2
    assert sorted(np.concatenate([arrays["y_train"], arrays["y_val"]]).tolist()) == [0, 1, 1]
    np.testing.assert_array_equal(arrays["y_test"], [0, 2])
    assert set(info["checksums"]) == ({cub.ARCHIVE} if archive else set(cub.FILES))
    assert all(len(v) == 64 for v in info["checksums"].values())


def test_images_are_decoded_cropped_and_normalised_per_batch(tmp_path):
    root = fabricate(tmp_path) / cub.FOLDER
    index = cub.read_index(root)
    test = cub.Images(root, index["path"], 16, train=False)
    x = test[np.array([0, 2])]
    assert x.shape == (2, 3, 16, 16) and len(test.take(3)) == 3
    # class 1 is bright in channel 1, class 2 in channel 2 (JPEG rounds a little)
    pixel = x[:, :, 8, 8] * torch.tensor(cub.STD) + torch.tensor(cub.MEAN)
    assert pixel[0].argmax() == 1 and pixel[1].argmax() == 2
    train = cub.Images(root, index["path"], 16, train=True)
    torch.manual_seed(0)
    a = train[np.array([0, 1, 2, 3])]
    torch.manual_seed(0)
    assert torch.equal(a, train[np.array([0, 1, 2, 3])])  # crops and flips come from torch's seeded generator
    assert test[0:2].shape == (2, 3, 16, 16)  # slices, as evaluation asks for them


def test_malformed_and_missing_cub_files_are_named(tmp_path):
    root = fabricate(tmp_path) / cub.FOLDER
    split = root / "train_test_split.txt"
    split.write_text("1 1\n2 0\n3 train\n4 1\n5 0\n")
    with pytest.raises(cub.CUBError, match=r"train_test_split.txt:3: expected '<id> <1 = train, 0 = test>', got '3 train'"):
        cub.read_index(root)
    split.write_text("1 1\n2 0\n3 2\n4 1\n5 0\n")
    with pytest.raises(cub.CUBError, match="image 3 has split 2"):
        cub.read_index(root)
    split.write_text("1 1\n2 0\n3 1\n4 1\n")
    with pytest.raises(cub.CUBError, match="train_test_split.txt and .*images.txt list different image ids"):
        cub.read_index(root)
    (root / "bounding_boxes.txt").unlink()
    with pytest.raises(cub.CUBError, match="bounding_boxes.txt is missing"):
        cub.read_index(root)
    with pytest.raises(cub.CUBError, match="CUB-200-2011 not found at"):
        cub.locate(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / cub.ARCHIVE).write_bytes(b"not a tgz")
    with pytest.raises(cub.CUBError, match="is not a readable .tgz"):
        cub.locate(tmp_path / "bad", tmp_path / "out")
    fabricate(tmp_path / "broken")
    jpg = next((tmp_path / "broken" / cub.FOLDER / "images").rglob("*.jpg"))
    jpg.write_bytes(b"\xff\xd8 truncated")
    index = cub.read_index(tmp_path / "broken" / cub.FOLDER)
    images = cub.Images(tmp_path / "broken" / cub.FOLDER, index["path"], 8, train=False)
    with pytest.raises(cub.CUBError, match="is not a readable image"):
        images[np.arange(5)]


def test_standin_parts_are_labelled_by_their_ordered_pair_and_lie_in_their_halves():
    m = fake_mnist(n_train=10_400, n_test=400)
    a = parts.generate(m, 0, {"train": 64, "val": 8, "test": 8}, progress=lambda s: None)
    b = parts.generate(m, 0, {"train": 64, "val": 8, "test": 8}, progress=lambda s: None)
    np.testing.assert_array_equal(a["large"]["x_train"], b["large"]["x_train"])
    big, small = a["large"]["x_train"], a["small"]["x_train"]
    assert big.shape == (64, parts.LARGE, parts.LARGE) and small.shape == (64, parts.LARGE // 2, parts.LARGE // 2)
    # the small set is the large canvas averaged over 2×2 blocks
    pooled = big.astype(float).reshape(64, parts.LARGE // 2, 2, parts.LARGE // 2, 2).mean((2, 4))
    assert np.abs(pooled - small).max() <= 1
    y, boxes = a["large"]["y_train"], a["large"]["boxes_train"]
    assert y.min() >= 0 and y.max() < parts.CLASSES
    assert (boxes[:, 0, 2] <= parts.LARGE / 2 + 1e-3).all() and (boxes[:, 1, 0] >= parts.LARGE / 2 - 1e-3).all()
    # the class is (left digit, right digit): the fake digits' labels, drawn per class pool
    left, right = y // parts.DIGITS, y % parts.DIGITS
    assert (left < parts.DIGITS).all() and (right < parts.DIGITS).all() and len(set(y.tolist())) > 10
    # a part's box holds ink
    i = 0
    x0, y0, x1, y1 = boxes[i, 0].astype(int)
    assert big[i, y0:y1 + 1, x0:x1 + 1].max() > 100


def test_models_start_tiling_and_learn_windows_at_the_localisation_rate():
    x = torch.rand(2, 1, 32, 32)
    for name in zoo.MODELS:
        torch.manual_seed(0)
        m = zoo.PartsNet(zoo.transformers(name), 1, 32, 16, 25, "small", width=4, loc_channels=8, loc_fc=8)
        assert m(x).shape == (2, 25)
        crops, theta = m.transform(x)
        k = zoo.transformers(name)
        assert theta.shape == (2, k, 2)
        if k:
            assert crops.shape == (2, k, 16, 16)
            np.testing.assert_allclose(theta[0].detach(), zoo.tiling(k), atol=1e-6)
            # window 1 of 2 starts as the left half's centre: the crop is x[..., 8:24, 0:16] averaged 2×2
            boxes = zoo.window_boxes(theta.detach(), 32)
            np.testing.assert_allclose(boxes[0, 0], [0, 8, 16, 24] if k == 2 else [0, 0, 16, 16], atol=1e-5)
            groups = {g["name"]: g for g in param_groups(m, 0.1, 1e-4)}
            assert groups["localisation"]["lr"] == pytest.approx(1e-5)
            loc_ids = {id(p) for p in groups["localisation"]["params"]}
            assert all(id(p) not in loc_ids for s in m.streams for p in s.parameters())
    with pytest.raises(ValueError, match="must be the crop size 16 or twice it"):
        zoo.PartsNet(2, 1, 40, 16, 25)
    with pytest.raises(ValueError, match="unknown Table 3 model"):
        zoo.transformers("3xST-CNN")


def test_googlenet_backbone_has_the_papers_shapes_and_takes_torchvision_weights(tmp_path):
    from torchvision.models import googlenet

    state = googlenet(weights=None, aux_logits=True, init_weights=False).state_dict()
    torch.save(state, tmp_path / "googlenet.pth")
    loaded = zoo.load_googlenet_weights(tmp_path / "googlenet.pth")
    backbone = zoo.GoogLeNetBackbone(3, loaded).eval()
    assert torch.equal(backbone.features[0].conv.weight, state["conv1.conv.weight"])
    with torch.no_grad():
        assert backbone.features(torch.rand(1, 3, 224, 224)).shape == (1, 1024, 7, 7)
    with pytest.raises(FileNotFoundError, match="googlenet weights .* do not exist"):
        zoo.load_googlenet_weights(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not a readable PyTorch weights file"):
        zoo.load_googlenet_weights(tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="lack .* tensors"):
        zoo.GoogLeNetBackbone(3, {"conv1.conv.weight": state["conv1.conv.weight"]})


def test_part_stats_count_parts_inside_different_windows():
    windows = torch.tensor([[[0, 0, 10, 10], [10, 0, 20, 10]],    # part 0 in window 0, part 1 in window 1
                            [[0, 0, 10, 10], [0, 0, 10, 10]],     # both windows on part 0
                            [[10, 0, 20, 10], [0, 0, 10, 10]]], dtype=torch.float64)  # swapped: still separated
    p = torch.tensor([[2, 2, 6, 6], [12, 2, 16, 6]], dtype=torch.float64).expand(3, 2, 4)
    s = finegrained.part_stats(windows, p)
    assert s["separated"] == pytest.approx(200 / 3)
    assert s["part0_window0"] == pytest.approx(200 / 3) and s["part1_window1"] == pytest.approx(100 / 3)
    half = torch.tensor([[[4, 0, 14, 10], [4, 0, 14, 10]]], dtype=torch.float64)  # half of each part inside: neither
    assert finegrained.part_stats(half, p[:1])["separated"] == 0


def test_table3_grid_skips_4x_at_224_and_its_table_keeps_cub_numbers_apart(tmp_path):
    section = {"source": "standin", "sizes": [224, 448], "models": ["CNN", "2xST-CNN", "4xST-CNN"], "seeds": [1],
               "skip": [{"size": 224, "model": "4xST-CNN"}]}
    g = registry.experiment("table3").grid(section, {})
    assert g.datasets == ["PARTS48", "PARTS96"] and ("PARTS48", "4xST-CNN", 1) not in g.cells() and len(g.cells()) == 5
    assert registry.experiment("table3").grid({**section, "source": "cub"}, {}).datasets == ["CUB224", "CUB448"]
    assert paper_number("table3", "2xST-CNN", "PARTS96") == (83.9, False)
    assert paper_number("table3", "CNN", "CUB224") == (82.3, False)
    assert paper_number("table3", "4xST-CNN", "CUB224") == (None, False)
    recs = [{"model": "CNN", "dataset": "PARTS96", "seed": 1, "accuracy": 70.0},
            {"model": "2xST-CNN", "dataset": "PARTS96", "seed": 1, "accuracy": 90.0}]
    md = render_table(recs, ["PARTS96"], ["CNN", "2xST-CNN"], "cap", tmp_path, "table3")["md"].read_text()
    assert "| Model | PARTS96 | paper: CUB 448px |" in md and "| 2xST-CNN | 90.0 | 83.9 |" in md
    assert "our accuracy in %" in md and "not comparable" in md


def test_a_cub_run_trains_on_decoded_batches_end_to_end(tmp_path):
    """The real-data path: CUB's index built from a fabricated archive, a 2×ST-CNN at 448 px trained two
    steps on images decoded per batch, its metrics written; no MLflow store is reachable here."""
    from stn import tracking
    from stn.io import read_json, write_json

    fabricate(tmp_path / "cub")
    out = {224: tmp_path / "data" / "CUB224.npz", 448: tmp_path / "data" / "CUB448.npz"}
    finegrained.build_data("cub", out, 0, cub={"path": str(tmp_path / "cub"), "validation": 1})
    assert read_json(out[448].with_suffix(".json"))["sizes"] == {"train": 2, "val": 1, "test": 2}
    write_json(tmp_path / "ids.json", {"table3": None})  # as stn mlflow-init writes it when the store is down
    job = {"experiment": "table3", "dataset": "CUB448", "model": "2xST-CNN", "seed": 1, "results": str(tmp_path),
           "extra": {"net": {"backbone": "small", "width": 2, "loc_channels": 4, "loc_fc": 4, "dropout": 0.0},
                     "cub": {"path": str(tmp_path / "cub"), "validation": 1, "weights": "none"}},
           "settings": {"iterations": 2, "batch_size": 2, "lr": 0.01, "momentum": 0.9, "lr_step": 10, "lr_gamma": 0.1,
                        "weight_decay": 0.0, "loc_lr_mult": 1e-4, "eval_every": 1, "eval_samples": 1,
                        "checkpoint_every": 1, "channels_last": False, "device": "cpu", "lr_milestones": [1]}}
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="unreachable"):
        metrics = finegrained.run_job(job, {"data": out[448], "experiments": tmp_path / "ids.json"}, run)
    assert metrics["accuracy"] == 100 - metrics["test_error"] and "separated" not in metrics
    assert (run / "model.pt").exists() and (run / tracking.PENDING).exists()
    assert [p["lr"] for p in read_json(run / "curve.json")] == [0.001, 0.001]  # lr_milestones: ÷10 after step 1
