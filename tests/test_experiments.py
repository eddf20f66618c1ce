"""Appendix A.1-A.3 generators and pieces: addition data, co-localisation data, IoU, the triplet loss, 3-D volumes."""
import json
import math

import numpy as np
import pytest
import torch

from stn import Affine3D, ops
from stn.data import distort, volumes
from stn.experiments import colocalisation as co
from stn.experiments import volumetric

from helpers import fake_mnist


def test_addition_labels_are_sums_and_both_channels_hold_digits():
    m = fake_mnist()
    d = distort.generate("ADD", m, 0, {"train": 40, "val": 8, "test": 8}, progress=lambda s: None)
    assert d["x_train"].shape == (40, 2, 42, 42)
    names = list(d["param_names"])
    partner_label = d["params_train"][:, names.index("partner_label")].astype(int)
    own = m["train_images"][:40], m["train_labels"][:40]
    np.testing.assert_array_equal(d["y_train"], own[1].astype(int) + partner_label)
    partner = d["params_train"][:, names.index("partner_index")].astype(int)
    np.testing.assert_array_equal(partner_label, m["train_labels"][partner])
    assert (d["x_train"].reshape(40, 2, -1).max(-1) > 100).all()  # a digit in each channel
    assert d["y_train"].max() <= 18


def test_repaired_addition_shows_the_digits_its_labels_add():
    m = fake_mnist()
    d = distort.generate("ADD", m, 0, {"train": 40, "val": 8, "test": 8}, progress=lambda s: None)
    pairs = distort.RepairedAddition(d["x_train"], d["y_train"], d["params_train"], pairings=3, seed=5)
    assert len(pairs) == len(pairs.labels) == 120
    names = list(d["param_names"])
    partner_label = d["params_train"][:, names.index("partner_label")].astype(int)
    first, second = d["y_train"] - partner_label, partner_label
    idx = torch.arange(120)
    x = pairs[idx]
    assert x.shape == (120, 2, 42, 42) and x.dtype == torch.uint8
    np.testing.assert_array_equal(pairs.labels[:40], d["y_train"])  # pairing 0 is the stored one
    np.testing.assert_array_equal(x[:40].numpy(), d["x_train"])
    for k in (45, 77, 119):  # re-paired: channel 0 of sample k % 40, channel 1 of its new partner
        j = int(np.flatnonzero((d["x_train"][:, 1] == x[k, 1].numpy()).all((1, 2)))[0])
        np.testing.assert_array_equal(x[k, 0].numpy(), d["x_train"][k % 40, 0])
        assert pairs.labels[k] == first[k % 40] + second[j]
    assert (pairs.partner[1:] != torch.arange(40)).any()  # the other pairings really re-pair
    assert pairs[7].shape == (2, 42, 42)
    with pytest.raises(ValueError, match="pairings must be at least 1"):
        distort.RepairedAddition(d["x_train"], d["y_train"], d["params_train"], pairings=0, seed=5)


def solid_digits():
    m = fake_mnist()
    m["test_images"][:] = 0
    m["test_images"][:, 9:19, 9:19] = 255
    m["test_labels"][:] = 8
    return m


@pytest.mark.parametrize("variant,clutter", [("T", 0), ("TC", 16)])
def test_colocalisation_images(variant, clutter):
    d = co.make_images(solid_digits(), 8, variant, 12, seed=0)
    assert d["images"].shape == (12, 84, 84)
    assert d["params"].shape[1] == 4 + 3 * clutter  # box, then clutter positions and sources
    for img, box in zip(d["images"], d["boxes"]):
        x0, y0, x1, y1 = box.astype(int)
        assert (x1 - x0, y1 - y0) == (28, 28)
        assert (img[y0 + 9 : y0 + 19, x0 + 9 : x0 + 19] == 255).all()  # the digit is inside its box
        if clutter == 0:
            outside = img.copy()
            outside[y0:y1, x0:x1] = 0
            assert outside.max() == 0  # T: nothing but the digit


def test_iou_on_known_boxes():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    torch.testing.assert_close(co.iou(a, b), torch.tensor([1.0, 50 / 150, 0.0]))


def test_box_from_attention_theta():
    box = co.boxes_from_theta(torch.tensor([[1 / 3, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(box, torch.tensor([[28.0, 28, 56, 56], [0, 0, 84, 84]]))


def test_a_larger_data_sets_cnn_sees_each_crop_in_the_middle_of_a_blank_canvas_of_its_size():
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 29 * 29, 3))
    crops = torch.rand(4, 1, 28, 28)
    canvas = torch.zeros(4, 1, 60, 60)
    canvas[:, :, 16:44, 16:44] = crops  # TC: a 28×28 digit in a 60×60 canvas
    torch.testing.assert_close(co.crop_encoder(cnn, 60)(crops), cnn(canvas))
    torch.testing.assert_close(co.encoder_features(co.crop_encoder(cnn, 60), crops), co.encoder_features(cnn, canvas))
    assert co.crop_encoder(cnn, 28) is cnn  # R, P, E: as it is
    with pytest.raises(ValueError, match="not 41×41"):
        co.crop_encoder(cnn, 41)


@pytest.mark.parametrize("padding", [(0, 0), (4, 3)])
def test_a_padded_crop_computes_only_where_the_crop_reaches_and_equals_the_padded_canvas(padding, monkeypatch):
    """The TC CNN's layers (standardise, a 9×9 InputGradConv2d, 2×2 max-pools, a 7×7 conv, the classifier), with
    and without "same" padding: features and crop gradients equal the padded canvas's, and the first convolution
    runs on the 44² window the crop reaches (36² outputs), not the 60² canvas."""
    from stn.models.conv import InputGradConv2d, conv_valid
    from stn.modules import Standardise

    torch.manual_seed(0)
    p1, p2 = padding
    side = ((60 + 2 * p1 - 8) // 2 + 2 * p2 - 6) // 2
    cnn = torch.nn.Sequential(Standardise().set_(0.1, 0.3), InputGradConv2d(1, 5, 9, padding=p1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(5, 6, 7, padding=p2), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(6 * side * side, 10))
    cnn = cnn.double().eval().requires_grad_(False)
    for layer in cnn:
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.normal_(layer.bias, 0.0, 0.5)  # blank-canvas responses that differ near the edges
    crops = torch.rand(3, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    padded = co.crop_encoder(cnn, 60)
    assert isinstance(padded, co.PaddedCrop)
    ours, theirs = co.encoder_features(padded, crops), co.encoder_features(torch.nn.Sequential(torch.nn.ZeroPad2d(16), *cnn), crops)
    torch.testing.assert_close(ours, theirs)
    weights = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad((ours * weights).sum(), crops)[0],
                               torch.autograd.grad((theirs * weights).sum(), crops)[0])
    torch.testing.assert_close(padded(crops), cnn(torch.nn.functional.pad(crops, (16,) * 4)))
    windows = []
    monkeypatch.setattr(co, "conv_valid", lambda layer, x: windows.append(x.shape[-1]) or conv_valid(layer, x))
    padded.feature_maps(crops)
    assert windows == [44, (60 + 2 * p1 - 8) // 2]  # the first conv reads 44² of the 60² canvas, the second all


def test_e_concatenates_its_cnns_features_each_scaled_so_its_squared_distances_count_its_weight():
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 13 * 13, 3))
    large = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 29 * 29, 4))
    e = co.Encoder([small, co.crop_encoder(large, 60)], [0.25, 1.0])
    a, b = torch.rand(2, 3, 1, 28, 28)
    d_small = (co.encoder_features(small, a) - co.encoder_features(small, b)).pow(2).sum(1)
    d_large = (co.encoder_features(co.crop_encoder(large, 60), a) - co.encoder_features(co.crop_encoder(large, 60), b)).pow(2).sum(1)
    torch.testing.assert_close((e(a) - e(b)).pow(2).sum(1), 0.25 * d_small + d_large)
    assert e.weight_of() == 1.25 and e.weight_of((0,)) == 0.25 and not any(p.requires_grad for p in e.parameters())
    with pytest.raises(ValueError, match="one positive weight per CNN"):
        co.Encoder([small], [0.0])


def test_a_missing_cnn_of_e_is_named_with_the_input_that_would_give_it():
    with pytest.raises(KeyError, match=r"e\(\) needs the CNN on TC: pass its model.pt as input encoder_TC=PATH"):
        co.load_encoder({"TC": 1.0}, {})


def test_e_from_table1s_run_copies_its_model_its_parameter_entry_and_its_metrics(tmp_path):
    run = tmp_path / "runs" / "table1" / "TC" / "CNN" / "seed1"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"weights")
    (run / "metrics.json").write_text(json.dumps({"dataset": "TC", "model": "CNN", "test_error": 7.98}))
    (tmp_path / "params.json").write_text(json.dumps({"TC": {"target": 120000}, "P": {"target": 1}}))
    out = tmp_path / "encoder_TC"
    metrics = co.copy_table1_encoder("TC", run, tmp_path / "params.json", out, tmp_path / "copy.log")
    assert (tmp_path / "copy.log").read_text() == f"copied {run} (Table 1's CNN on TC) to {out}\n"
    assert (out / "model.pt").read_bytes() == b"weights" and json.loads((out / "params.json").read_text()) == {"TC": {"target": 120000}}
    assert json.loads((out / "metrics.json").read_text()) == metrics == {"dataset": "TC", "model": "CNN", "test_error": 7.98,
                                                                         "from_run": str(run)}
    with pytest.raises(KeyError, match="parameter table .* has no RTS"):
        co.copy_table1_encoder("RTS", run, tmp_path / "params.json", tmp_path / "encoder_RTS")


def test_triplet_loss_by_hand():
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    pair = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # squared distances 1, 1
    rand = torch.tensor([[2.0, 0.0], [1.0, 0.5]])  # squared distances 4, 0.25
    # max(0, 1 - 4 + 1) = 0 and max(0, 1 - 0.25 + 1) = 1.75 -> mean 0.875
    assert co.triplet_loss(e, pair, rand, margin=1.0).item() == pytest.approx(0.875)


def test_window_shrinks_geometrically_from_the_canvas_to_the_digit():
    assert co.window_scale(0, 1.0, 300) == pytest.approx(1.0)
    assert co.window_scale(150, 1.0, 300) == pytest.approx(math.sqrt(28 / 84))  # halfway in log scale
    assert co.window_scale(300, 1.0, 300) == co.window_scale(10_000, 1.0, 300) == pytest.approx(28 / 84)
    assert co.window_scale(0, 1.0, 0) == pytest.approx(28 / 84)  # no annealing: digit-sized throughout


def test_centred_localiser_keeps_the_mean_crop_at_the_canvas_centre():
    torch.manual_seed(0)
    st = co.localiser(centred=True)
    with torch.no_grad():
        st.regressor.linear.weight.normal_()
        st.regressor.linear.bias.fill_(0.3)  # a shared shift the centring must remove
    x = torch.rand(6, 1, co.CANVAS, co.CANVAS)
    crops, theta = co.localise(st, x, 0.5)
    assert crops.shape == (6, 1, co.CROP, co.CROP) and theta.shape == (6, 3)
    assert torch.allclose(theta[:, 0], torch.full((6,), 0.5))
    assert theta[:, 1:].mean(0).abs().max() < 1e-6 and theta[:, 1:].std(0).min() > 1e-4
    plain = co.localiser(centred=False)
    with torch.no_grad():
        plain.regressor.bias.fill_(0.3)
    assert torch.allclose(co.localise(plain, x, 0.5)[1][:, 1:], torch.full((6, 2), 0.3))


def test_ink_offset_is_the_mean_ink_centroid_in_crop_units():
    crops = torch.zeros(2, 1, 4, 4)
    crops[0, 0, 1, 3] = 1.0  # pixel centre x = 0.75, y = -0.25
    crops[1, 0, 2, 0] = 1.0  # x = -0.75, y = 0.25
    crops[1, 0, 2, 1] = 1.0  # x = -0.25: this crop's centroid x = -0.5
    torch.testing.assert_close(co.ink_offset(crops), torch.tensor([(0.75 - 0.5) / 2, 0.0]))
    assert co.ink_offset(torch.zeros(3, 1, 4, 4)).abs().max() == 0  # blank crops count as centred


def test_recentre_moves_the_crops_mean_towards_their_ink():
    torch.manual_seed(0)
    st = co.localiser(centred=True)
    x = torch.zeros(5, 1, co.CANVAS, co.CANVAS)
    x[:, :, 40:44, 50:54] = 1.0  # ink right of the centre in every image, inside the centred crops
    scale = co.CROP / co.CANVAS
    crops, theta = co.localise(st, x, scale)
    assert theta[:, 1:].mean(0).abs().max() < 1e-6
    offset = co.ink_offset(crops)
    assert offset[0] > 0.3 and abs(offset[1]) < 0.1
    co.recentre(st, crops, scale)
    moved = co.localise(st, x, scale)[1][:, 1:].mean(0)
    torch.testing.assert_close(moved, co.RECENTRE_RATE * scale * offset)


def test_optimise_names_the_centre_choices(monkeypatch):
    with pytest.raises(ValueError, match=r"optimise.centre must be one of \['ink', 'canvas', 'none'\]"):
        co.optimise(np.zeros((2, co.CANVAS, co.CANVAS), np.uint8), np.zeros((2, 4), np.float32), torch.nn.Sequential(),
                    {"centre": True}, 0)


def test_a_random_bank_encodes_k_patches_once_and_each_step_draws_its_patch_from_them(monkeypatch):
    torch.manual_seed(0)
    images = (torch.rand(5, co.CANVAS, co.CANVAS) * 255).to(torch.uint8).numpy()
    boxes = np.tile(np.array([[20, 20, 48, 48]], np.float32), (5, 1))
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 5), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 4))
    calls, drawn = [], []

    class Counting(co.Encoder):
        def parts(self, x, only=None):
            calls.append(len(x))
            return super().parts(x, only)

    loss = co.triplet_loss
    drawn_args = []
    monkeypatch.setattr(co, "triplet_loss", lambda a, b, r, m: drawn.append(r.detach())
                        or drawn_args.append((a.detach(), b.detach(), r.detach(), m)) or loss(a, b, r, m))
    settings = {"images": 5, "steps": 8, "optimizer": "adam", "lr": 0.003, "momentum": 0.9, "margin": 4.0, "scale_from": 1.0,
                "anneal_steps": 4, "centre": "ink", "record_every": 4, "figure_images": 2}
    frames = co.optimise(images, boxes, Counting([cnn], [1.0]), settings, 0, log=lambda s: None)["trajectory"]
    assert len(calls) == 2 * 8  # fresh patches: e() of the crops and of new patches every step
    losses = [float(loss(*args)) for args in drawn_args]  # eq. 8 of each step, recomputed from its inputs
    assert [f["step"] for f in frames] == [0, 4, 8] and frames[0]["loss"] is None
    assert [f["loss"] for f in frames[1:]] == pytest.approx([np.mean(losses[:4]), np.mean(losses[4:])], rel=1e-6)
    assert frames[1]["loss"] != frames[2]["loss"]
    drawn_args.clear()
    calls.clear(), drawn.clear()
    co.optimise(images, boxes, Counting([cnn], [1.0]), {**settings, "random_bank": 3}, 0, log=lambda s: None)
    assert len(calls) == 3 + 8  # the bank once, then only the crops
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    bank = co.random_bank(x, co.Encoder([cnn], [1.0]), 3, torch.Generator().manual_seed(0))  # drawn first from the seed
    assert len(bank) == 1 and bank[0].shape[:2] == (5, 3) and len(drawn) == 8
    for e_rand in drawn:  # every image's patch is one of its own three
        assert all(any(torch.equal(e_rand[n], bank[0][n, k]) for k in range(3)) for n in range(5))
    assert len({float(e_rand[0, 0]) for e_rand in drawn}) > 1  # and not always the same one


def test_a_cnn_of_e_joins_from_its_start_step_with_its_weight_in_the_margin(monkeypatch):
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 13 * 13, 3))
    large = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 29 * 29, 4))
    e = co.Encoder([small, co.crop_encoder(large, 60)], [0.25, 1.0], ["P", "TC"])
    in_use = co.encoder_schedule(e, {"TC": 4})
    assert [in_use(step) for step in (0, 3, 4, 7)] == [(0,), (0,), (0, 1), (0, 1)]
    crops = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(e(crops, (0,)), e(crops)[:, :e(crops, (0,)).shape[1]])  # P's block alone
    assert co.encoder_schedule(e, {"E": 4})(0) == (0, 1)  # another variant's CNN: not this e()'s concern
    with pytest.raises(ValueError, match="some CNN of e.* must start at step 0"):
        co.encoder_schedule(e, {"P": 2, "TC": 4})
    seen = []
    loss = co.triplet_loss
    monkeypatch.setattr(co, "triplet_loss", lambda a, b, r, m: seen.append((a.shape[1], r.shape[1], m)) or loss(a, b, r, m))
    images = (torch.rand(4, co.CANVAS, co.CANVAS) * 255).to(torch.uint8).numpy()
    settings = {"images": 4, "steps": 8, "optimizer": "adam", "lr": 0.003, "momentum": 0.9, "margin": 4.0, "scale_from": 1.0,
                "anneal_steps": 4, "centre": "ink", "record_every": 4, "figure_images": 2, "encoder_start": {"TC": 4}}
    for bank in (0, 2):
        seen.clear()
        co.optimise(images, np.zeros((4, 4), np.float32), e, {**settings, "random_bank": bank}, 0, log=lambda s: None)
        p_width, both = e(crops, (0,)).shape[1], e(crops).shape[1]
        assert seen == [(p_width, p_width, 1.0)] * 4 + [(both, both, 5.0)] * 4  # margin 4 per unit of weight in use


def test_native_resolution_samples_each_window_at_the_images_pixel_pitch_up_to_the_largest_canvas(monkeypatch):
    # the side of the crop: 28 with "digit"; with "native" the window's own side on 84 px, even, 28 to the largest canvas
    assert [co.crop_side(s, "digit", 60) for s in (1.0, 0.5, 1 / 3)] == [28, 28, 28]
    assert [co.crop_side(s, "native", 60) for s in (1.0, 0.6, 0.5, 1 / 3)] == [60, 50, 42, 28]
    assert co.crop_side(1.0, "native", 28) == 28  # e() of 28 px CNNs only (T's): as "digit"
    with pytest.raises(ValueError, match=r"optimise.resolution must be one of \['digit', 'native'\], got 'full'"):
        co.crop_side(1.0, "full", 60)
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 13 * 13, 3))
    large = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(2 * 29 * 29, 4))
    e = co.Encoder([small, co.crop_encoder(large, 60)], [0.25, 1.0], ["P", "TC"])
    assert e.largest() == 60 and e.largest((0,)) == 28
    crops = torch.rand(3, 1, 50, 50)  # a 50 px window: P's CNN reads it at 28², TC's centred on its 60² canvas
    resized = torch.nn.functional.interpolate(crops, size=(28, 28), mode="bilinear", antialias=True)
    torch.testing.assert_close(e(crops), torch.cat([co.encoder_features(small, resized) * 0.5,
                                                    co.encoder_features(large, torch.nn.functional.pad(crops, (5,) * 4))], 1))
    sides = []
    monkeypatch.setattr(co, "encoder_features", lambda cnn, x, f=co.encoder_features: sides.append(x.shape[-1]) or f(cnn, x))
    images = (torch.rand(4, co.CANVAS, co.CANVAS) * 255).to(torch.uint8).numpy()
    settings = {"images": 4, "steps": 4, "optimizer": "adam", "lr": 0.003, "momentum": 0.9, "margin": 4.0, "scale_from": 1.0,
                "anneal_steps": 2, "centre": "ink", "record_every": 4, "figure_images": 2, "resolution": "native"}
    co.optimise(images, np.zeros((4, 4), np.float32), e, settings, 0, log=lambda s: None)
    # per step: fresh digit-sized random patches (P, TC), then the crops (P 28, TC at the window's side: 60, 48, 28, 28)
    assert set(sides[::4] + sides[1::4] + sides[2::4]) == {28} and sides[3::4] == [60, 48, 28, 28]


def test_derangement_never_pairs_an_image_with_itself():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 100):
        p = co.derangement(n, gen)
        assert (p != torch.arange(n)).all() and sorted(p.tolist()) == list(range(n))


def test_inverse_rotation_maps_a_volume_back():
    digits = torch.from_numpy(fake_mnist()["train_images"][:1])
    flat = np.array([[0, 0, 0, 0, 0.1, -0.1, 0.0]], dtype=np.float64)
    turned = flat.copy()
    turned[0, 3] = 90.0  # about the depth axis
    v0 = volumes.render(digits, flat)
    v90 = volumes.render(digits, turned)
    assert not torch.allclose(v0, v90, atol=1e-3)
    rot = torch.zeros(1, 3)
    rot[0, 2] = math.pi / 2
    from stn.transforms import rotation_matrix_3d

    back = torch.cat([rotation_matrix_3d(rot.double()), torch.zeros(1, 3, 1, dtype=torch.float64)], 2).reshape(1, 12)
    # the shift does not commute with the rotation: undo it around the rotated shift
    undone = ops.sample(v90, Affine3D().grid(back.float(), (60, 60, 60)))
    shift_only = flat.copy()
    shift_only[0, 4:7] = (rotation_matrix_3d(rot.double())[0].T @ torch.tensor(flat[0, 4:7])).numpy()
    torch.testing.assert_close(undone, volumes.render(digits, shift_only), atol=1e-4, rtol=0)


def test_volume_set_renders_on_demand_and_models_match_in_size():
    m = fake_mnist()
    d = volumes.generate(m, 0, {"train": 6, "val": 2, "test": 2})
    sets = volumes.load_sets(m, d)
    batch = sets["x_train"][torch.tensor([0, 3])]
    assert batch.shape == (2, 1, 60, 60, 60) and batch.max() > 0.5
    assert len(sets["x_train"].take(4)) == 4
    st, _ = volumetric.build("ST3D", 16)
    base, _ = volumetric.build("baseline", 16)
    assert abs(volumetric.count(st) - volumetric.count(base)) <= 0.05 * volumetric.count(st)
    assert st(batch).shape == (2, 10) and base(batch).shape == (2, 10)


def test_depth_flatten_sums_the_slab_as_the_paper_does():
    """An 8-voxel slab of ones must reach the classifier at brightness 8, not 8 / depth."""
    v = torch.zeros(1, 1, 30, 4, 4)
    v[:, :, 11:19] = 1.0
    flat = volumetric.DepthFlatten()(v)
    assert flat.shape == (1, 1, 4, 4)
    torch.testing.assert_close(flat, torch.full((1, 1, 4, 4), 8.0))


def test_centroid_spread_is_the_rms_distance_of_ink_centroids_from_their_mean():
    from stn.experiments import centroid_spread

    images = torch.zeros(2, 5, 5)
    images[0, 2, 1] = images[1, 2, 3] = 1.0  # centroids (1, 2) and (3, 2): 1 px either side of their mean
    assert centroid_spread(images) == pytest.approx(1.0)
    images[1] = images[0]
    assert centroid_spread(images) == 0.0


class _TwoTransformers(torch.nn.Module):
    """ST1 puts channel 1's dot in one place and moves channel 2's; ST2 the other way round."""

    def __init__(self, count=2):
        super().__init__()
        self.sts = torch.nn.ModuleList([torch.nn.Identity() for _ in range(count)])

    def transform(self, x):
        fixed = torch.zeros_like(x[:, :1])
        fixed[:, :, 4, 4] = 1.0
        return torch.cat([fixed, x[:, 1:].roll(2, dims=3), x[:, :1].roll(1, dims=2), fixed], 1), None


def test_channel_focus_finds_the_channel_each_parallel_transformer_holds():
    from stn.experiments import channel_focus
    from stn.report.tables import held_channels

    x = torch.zeros(4, 2, 10, 10)
    for i in range(4):  # each channel's dot at a different place in every image
        x[i, 0, 1 + i, 2] = x[i, 1, 6, 1 + 2 * i] = 1.0
    focus = channel_focus(_TwoTransformers(), x)
    assert list(focus) == ["input", "ST1", "ST2"]
    assert focus["ST1"][0] == 0.0 and focus["ST2"][1] == 0.0  # each holds one channel's dot in place
    assert focus["ST1"][1] == pytest.approx(focus["input"][1]) and focus["ST2"][0] == pytest.approx(focus["input"][0])
    assert held_channels(focus) == {"ST1": 0, "ST2": 1}
    assert held_channels({"input": [2.0, 2.0], "ST1": [1.5, 3.0]}) == {"ST1": None}  # 1.5 is not below 0.5 × 2.0
    assert channel_focus(_TwoTransformers(count=1), x) == {}  # one transformer: nothing to split
