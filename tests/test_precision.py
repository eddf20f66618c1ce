"""precision: bf16 — training steps under bfloat16 autocast, with weights, gradients, θ and sampling in fp32."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stn.experiments import volumetric
from stn.models import cub, mnist as zoo, svhn
from stn.modules import SpatialTransformer
from stn.train import TrainSettings, _forward_backward, make_optimizer, train_run

from test_train import SETTINGS, tiny_data


def _batch(shape, n=16, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _dtypes_seen(model, kinds):
    """(a list filled with (module kind, output dtype, θ's dtype or None) by forward hooks on every module of
    `kinds`, the hooks' handles)."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(
                 (type(mod).__name__, (out[0] if isinstance(out, tuple) else out).dtype,
                  out[1].dtype if isinstance(out, tuple) else None)))
             for m in model.modules() if isinstance(m, kinds)]
    return seen, hooks


def test_a_bf16_step_runs_convolutions_in_bf16_and_keeps_theta_sampling_and_gradients_fp32():
    torch.manual_seed(0)
    net = zoo.build("ST-CNN-Aff", zoo.InputSpec(1, 28, 10, False), 120_000).model
    with torch.no_grad():  # a regressor away from its zero start, so that θ depends on the input
        for st in net.modules():
            if isinstance(st, SpatialTransformer):
                st.regressor.weight.normal_(0, 1e-2)
    x, y = _batch((1, 28, 28))
    grads = {}
    for precision in ("fp32", "bf16"):
        opt = make_optimizer("sgd", net.parameters(), 0.01, 0.9)
        seen, hooks = _dtypes_seen(net, (torch.nn.Conv2d, SpatialTransformer))
        loss = _forward_backward(net, opt, x, y, precision)
        grads[precision] = (loss.item(), torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in net.parameters())
        assert loss.dtype == torch.float32
        convs = {dtype for kind, dtype, _ in seen if kind != "SpatialTransformer"}
        assert convs == {torch.bfloat16 if precision == "bf16" else torch.float32}
        # the transformer's sampled image and θ (its two outputs) are fp32 either way
        assert [(out, theta) for kind, out, theta in seen if kind == "SpatialTransformer"] == [(torch.float32,) * 2]
        for hook in hooks:
            hook.remove()
    (loss32, g32), (loss16, g16) = grads["fp32"], grads["bf16"]
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert F.cosine_similarity(g16, g32, dim=0) > 0.98


def test_bf16_runs_learn_the_toy_task_and_repeat_bitwise(tmp_path):
    settings = TrainSettings.from_dict({**SETTINGS, "iterations": 60, "channels_last": True, "precision": "bf16",
                                        "optimizer": "adam", "lr": 0.003})  # SGD at 0.01: 87.5% in fp32 too
    files, errors = [], []
    for r in range(2):
        torch.manual_seed(0)
        net = zoo.build("ST-CNN-Aff", zoo.InputSpec(1, 28, 10, False), 120_000).model
        errors.append(train_run(net, tiny_data(), settings, 0, tmp_path / str(r), log=lambda s: None)["test_error"])
        files.append((tmp_path / str(r) / "model.pt").read_bytes())
        state = torch.load(tmp_path / str(r) / "model.pt")["state_dict"]
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    assert errors[0] < 50 and errors[0] == errors[1]
    assert files[0] == files[1]


def test_precision_is_checked_and_left_out_of_job_specs_at_its_default():
    with pytest.raises(ValueError, match=r"precision 'fp16' is not one of \['bf16', 'fp32'\]"):
        TrainSettings.from_dict({**SETTINGS, "precision": "fp16"})
    assert "precision" not in TrainSettings(**SETTINGS).to_dict()  # job specs written before the key read the same
    assert TrainSettings.from_dict({**SETTINGS, "precision": "bf16"}).to_dict()["precision"] == "bf16"


@pytest.mark.parametrize("name, make, shape, classes", [
    ("Table 1 ST-FCN-TPS", lambda: zoo.build("ST-FCN-TPS", zoo.InputSpec(1, 28, 10, False), 60_000).model, (1, 28, 28), 10),
    ("Table 4 2xST-FCN-Proj", lambda: zoo.build("2xST-FCN-Proj", zoo.InputSpec(2, 42, 19, True), 120_000).model,
     (2, 42, 42), 19),
    # ST-CNN Multi's transformers warp bf16 feature maps: they sample them in fp32
    ("Table 2 ST-CNN-Multi", lambda: svhn.build("ST-CNN-Multi", 1, 64, width=0.1667, fc=16, loc_filters=4, dropout=0.0),
     (1, 64, 64), None),
    ("Table 3 4xST-CNN", lambda: cub.PartsNet(4, 1, 32, 16, 25, "small", width=4, loc_channels=8, loc_fc=8), (1, 32, 32), 25),
    ("A.3 ST3D", lambda: volumetric.build("ST3D", 8)[0], (1, 60, 60, 60), 10),
])
def test_every_experiments_models_train_a_bf16_step_with_fp32_gradients(name, make, shape, classes):
    torch.manual_seed(0)
    net = make()
    x, y = _batch(shape)
    if classes is None:  # Table 2: 5 sequence positions of 11 classes each
        y = torch.randint(0, 11, (16, 5))
    before = [p.detach().clone() for p in net.parameters()]
    opt = make_optimizer("sgd", net.parameters(), 0.01, 0.9)
    loss = _forward_backward(net, opt, x, y, "bf16")
    opt.step()
    assert np.isfinite(loss.item())
    assert all(p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())
               for p in net.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters())), f"{name}: nothing was updated"


def test_table5s_e_in_bf16_runs_its_convolutions_in_bf16_and_gives_fp32_features_and_crop_gradients():
    from stn.experiments import colocalisation as co

    torch.manual_seed(0)
    cnn = zoo.build("CNN", zoo.InputSpec(1, 60, 10, False), 60_000).model
    crops = torch.rand(8, 1, 28, 28, requires_grad=True)
    feats, grads = {}, {}
    for precision in ("fp32", "bf16"):
        e = co.Encoder([co.crop_encoder(cnn, 60)], [1.0], ["TC"], precision)
        seen, hooks = _dtypes_seen(e, (torch.nn.Conv2d,))
        out = e(crops)
        for h in hooks:
            h.remove()
        assert {dtype for _, dtype, _ in seen} == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert out.dtype == torch.float32
        (grads[precision],) = torch.autograd.grad((out - out.detach().roll(1, 0)).pow(2).sum(), crops)  # as eq. 8's
        assert grads[precision].dtype == torch.float32
        feats[precision] = out.detach()
    torch.testing.assert_close(feats["bf16"], feats["fp32"], atol=3e-2, rtol=0)  # unit-norm blocks, bf16's 3 digits
    assert F.cosine_similarity(grads["bf16"].flatten(), grads["fp32"].flatten(), dim=0) > 0.98
    with pytest.raises(ValueError, match=r"optimise.precision must be one of \['fp32', 'bf16'\], got 'fp16'"):
        co.Encoder([cnn], [1.0], precision="fp16")


def test_table5s_e_precision_is_one_for_every_variant_or_per_variant_and_the_schema_checks_the_variants():
    import copy

    import yaml

    from stn.config import ConfigError, validate
    from stn.experiments import colocalisation as co

    root = Path(__file__).resolve().parents[1]
    schema = root / "workflow" / "schemas" / "config.schema.json"

    assert [co.encoder_precision({"precision": {"TC": "bf16"}}, v) for v in ("T", "TC")] == ["fp32", "bf16"]
    assert [co.encoder_precision({"precision": "bf16"}, v) for v in ("T", "TC")] == ["bf16", "bf16"]
    assert co.encoder_precision({}, "TC") == "fp32"  # absent: the paper's
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    assert cfg["table5"]["optimise"]["precision"] == {"TC": "bf16"}  # the default: TC's e() in bf16, T's fp32
    validate(copy.deepcopy(cfg), schema)
    cfg["table5"]["optimise"]["precision"] = {"TX": "bf16"}
    with pytest.raises(ConfigError, match=r"table5.optimise.precision"):
        validate(cfg, schema)
