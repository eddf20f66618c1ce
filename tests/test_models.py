"""Appendix A.4 models: parameter matching, shapes, identity-initialised transformers."""
import pytest
import torch

from stn.experiments.classification import input_spec, param_table
from stn.models import mnist as zoo
from stn.models.conv import InputGradConv2d, _Conv2dFoldBackward, _input_grad_by_fold

TABLE1_MODELS = ["FCN", "CNN"] + [f"ST-{b}-{t}" for b in ("FCN", "CNN") for t in ("Aff", "Proj", "TPS")]


@pytest.mark.parametrize("cap", [120_000, 400_000])
def test_every_model_of_a_dataset_within_5_percent(cap):
    table = param_table(["R", "RTS", "P", "E", "TC"], TABLE1_MODELS, cap)
    for ds, entry in table.items():
        for m, e in entry["models"].items():
            assert abs(e["params"] - entry["target"]) <= 0.05 * entry["target"], (ds, m, e)
        assert entry["target"] <= cap


def test_widths_stay_in_paper_ranges_where_possible():
    table = param_table(["R"], TABLE1_MODELS, 400_000)
    assert all(e["in_paper_range"] for e in table["R"]["models"].values())
    cnn = table["R"]["models"]["CNN"]["widths"]
    assert 32 <= cnn["c1"] <= 64 and 32 <= cnn["c2"] <= 64


@pytest.mark.parametrize("dataset", ["R", "RTS", "TC"])
@pytest.mark.parametrize("name", ["FCN", "CNN", "ST-FCN-Proj", "ST-CNN-TPS", "ST-CNN-Aff"])
def test_forward_shapes_and_identity_start(dataset, name):
    inp = input_spec(dataset)
    built = zoo.build(name, inp, 120_000)
    x = torch.rand(3, 1, inp.size, inp.size)
    assert built.model(x).shape == (3, 10)
    if name.startswith("ST"):
        out, theta = built.model.transform(x)
        torch.testing.assert_close(out, x, atol=1e-5, rtol=0)  # identity at initialisation
        assert out.shape == x.shape


def test_rts_classifier_uses_padding_when_valid_convs_do_not_fit():
    assert zoo._cnn_spatial(21) == (4, 3, 5)  # 21x21 after pooling RTS: 'same' padding
    assert zoo._cnn_spatial(42) == (0, 0, 5)
    assert zoo._cnn_spatial(30) == (0, 0, 2)


def test_model_names_are_checked():
    assert zoo.ModelSpec.parse("2xST-FCN-TPS") == zoo.ModelSpec("FCN", "TPS", 2)
    with pytest.raises(ValueError, match="unknown model 'ST-RNN-Aff'"):
        zoo.ModelSpec.parse("ST-RNN-Aff")


@pytest.mark.parametrize("padding,bias", [(0, True), (2, True), (1, False)])
def test_input_grad_conv_matches_conv2d_in_value_and_every_gradient(padding, bias):
    torch.manual_seed(0)
    fast = InputGradConv2d(1, 5, 5, padding=padding, bias=bias).double()
    plain = torch.nn.Conv2d(1, 5, 5, padding=padding, bias=bias).double()
    plain.load_state_dict(fast.state_dict())  # same parameter names: checkpoints load either way
    assert (fast.bias is None) == (not bias)
    x = torch.randn(3, 1, 9, 11, dtype=torch.double, requires_grad=True)
    grad = torch.randn_like(plain(x))
    outs = []
    for conv in (fast, plain):
        conv.zero_grad()
        x.grad = None
        y = conv(x)
        y.backward(grad)
        outs.append((y.detach(), x.grad.clone(), conv.weight.grad.clone(), *([conv.bias.grad.clone()] if bias else [])))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    small = torch.randn(2, 1, 6, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w, *b: _Conv2dFoldBackward.apply(t, w, b[0] if b else None, (padding, padding)),
                                    (small, fast.weight, *([fast.bias] if bias else [])))


@pytest.mark.parametrize("table,dataset,model", [("table2", "SEQ64", "ST-CNN-Single"), ("table2", "SEQ64", "ST-CNN-Multi"),
                                                 ("table3", "PARTS48", "2xST-CNN")])
def test_the_first_convolution_behind_a_transformer_takes_the_fold_input_gradient(table, dataset, model):
    """Tables 2 and 3: the conv that reads a transformer's one-channel output returns d input through the fold
    (InputGradConv2d); in the CNN, on the raw image, the same layer is the plain convolution."""
    from stn.experiments import finegrained, multidigit
    from stn.paper import registry

    net = {"table2": {"width": 0.1667, "fc": 16, "loc_filters": 4, "dropout": 0.0, "init": "he"},
           "table3": {"backbone": "small", "width": 4, "loc_channels": 8, "loc_fc": 8, "dropout": 0.0}}[table]
    build = (multidigit if table == "table2" else finegrained).build_model
    x = torch.rand(2, 1, *([registry.DATASETS[dataset].size] * 2))
    for name, folds in ((model, True), ("CNN", False)):
        net_ = build(dataset, name, net, 0)
        convs = [m for m in net_.modules() if isinstance(m, InputGradConv2d)]
        assert convs and all(m.in_channels == 1 for m in convs), name
        seen = []
        for m in convs:
            m.register_forward_pre_hook(lambda m, args: seen.append(m.folds(args[0])))
        net_(x).float().sum().backward()
        assert any(seen) == folds, (name, seen)


@pytest.mark.parametrize("channels_last", [False, True])
def test_input_grad_conv_under_bf16_autocast_matches_conv2d_and_returns_fp32_gradients(channels_last):
    """bf16 training: the convolution in bf16 as autocast runs F.conv2d, the gradients in the parameters' and
    the input's fp32, within bf16's rounding of the plain layer's (whose input gradient oneDNN computes)."""
    torch.manual_seed(0)
    fast = InputGradConv2d(1, 6, 9, padding=2)
    plain = torch.nn.Conv2d(1, 6, 9, padding=2)
    plain.load_state_dict(fast.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(5, 1, 30, 30).contiguous(memory_format=fmt).requires_grad_()
    outs = []
    for conv in (fast.to(memory_format=fmt), plain.to(memory_format=fmt)):
        conv.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.bfloat16
        (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        assert x.grad.dtype == conv.weight.grad.dtype == conv.bias.grad.dtype == torch.float32
        outs.append((y.float().detach(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02 * b.abs().max().item())
    assert (outs[0][1] - outs[1][1]).abs().max() > 0  # the fold path ran (it rounds differently from oneDNN)


def test_fold_columns_in_fp32_sum_the_bf16_products_exactly_and_bf16_columns_do_not():
    """Under bf16 autocast dY and W are bf16. With columns_dtype float32 the input gradient is their products summed in
    fp32 (to fp32's rounding of the exact sum); bf16 columns round each column first, ~2⁻⁹ of it, which is what broke
    Table 5's class 1 where columns cancel (docs/CHOICES.md). And the layer passes its columns_dtype on."""
    torch.manual_seed(0)
    g, w = torch.randn(3, 39, 20, 20).bfloat16(), torch.randn(39, 1, 9, 9).bfloat16()
    exact = torch.nn.grad.conv2d_input((3, 1, 28, 28), w.double(), g.double())
    error = lambda dx: ((dx.double() - exact).abs().max() / exact.abs().max()).item()  # noqa: E731
    fp32 = _input_grad_by_fold(g, w, torch.Size((3, 1, 28, 28)), (0, 0), torch.float32)
    bf16 = _input_grad_by_fold(g, w, torch.Size((3, 1, 28, 28)), (0, 0))
    assert fp32.dtype == bf16.dtype == torch.float32
    assert error(fp32) < 1e-6 and error(bf16) > 1e-4
    conv = InputGradConv2d(1, 39, 9)
    conv.columns_dtype = torch.float32
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.backward(torch.ones_like(y))
    dy = torch.ones(2, 39, 20, 20, dtype=torch.bfloat16)
    expected = torch.nn.grad.conv2d_input((2, 1, 28, 28), conv.weight.bfloat16().double(), dy.double())
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())


def test_he_init_and_standardisation_keep_the_identity_start_and_the_parameter_count():
    inp = input_spec("TC")
    plain = zoo.build("ST-CNN-Aff", inp, 120_000)
    torch.manual_seed(0)
    net = zoo.build("ST-CNN-Aff", inp, 120_000, zoo.Net(init="he", standardise=True))
    assert net.params == plain.params  # statistics are buffers, not parameters
    assert zoo.set_standardisation(net.model, 0.2, 0.5) == 2  # classifier and localisation net
    x = torch.rand(2, 1, 60, 60)
    out, theta = net.model.transform(x)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)  # still the identity: the sampler sees raw pixels
    conv = net.model.classifier[1]
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() - (2 / fan_in) ** 0.5) < 0.3 * (2 / fan_in) ** 0.5 and conv.bias.abs().max() == 0
    assert net.model.sts[0].regressor.weight.abs().max() == 0
    state = net.model.state_dict()
    assert float(state["classifier.0.mean"]) == pytest.approx(0.2) and float(state["classifier.0.std"]) == pytest.approx(0.5)


def test_standardise_normalises_and_rejects_a_zero_std():
    from stn.modules import Standardise

    s = Standardise().set_(0.5, 0.25)
    torch.testing.assert_close(s(torch.tensor([0.5, 1.0])), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="positive std"):
        Standardise().set_(0.1, 0.0)


def test_transform_stats_reads_zoom_and_shift_of_affine_transformers():
    from stn.experiments import transform_stats

    built = zoo.build("ST-FCN-Aff", input_spec("TC"), 120_000)
    with torch.no_grad():
        built.model.sts[0].regressor.bias.copy_(torch.tensor([0.5, 0.0, 0.3, 0.0, 0.5, -0.4]))
    stats = transform_stats(built.model, torch.zeros(7, 60, 60, dtype=torch.uint8).numpy())
    assert stats["zoom"] == pytest.approx(0.5) and stats["shift"] == pytest.approx(0.5)
    assert transform_stats(zoo.build("CNN", input_spec("TC"), 120_000).model, torch.zeros(2, 60, 60).numpy()) == {}
    assert transform_stats(zoo.build("ST-FCN-TPS", input_spec("TC"), 120_000).model, torch.zeros(2, 60, 60).numpy()) == {}


def test_transform_stats_reads_the_first_transformer_of_a_sequence_net():
    from stn.experiments import transform_stats
    from stn.models import svhn

    net = svhn.build("ST-CNN-Multi", 1, 64, width=0.1667, fc=16, loc_filters=4, dropout=0.0)
    with torch.no_grad():
        net.sts["0"].regressor.bias.copy_(torch.tensor([0.25, 0.0, 0.0, 0.0, 0.25, 0.6]))
    stats = transform_stats(net, torch.zeros(3, 1, 64, 64, dtype=torch.uint8).numpy())
    assert stats["zoom"] == pytest.approx(0.25) and stats["shift"] == pytest.approx(0.6)
    assert transform_stats(svhn.build("CNN", 1, 64, width=0.1667, fc=16), torch.zeros(2, 1, 64, 64).numpy()) == {}


def _unfused(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with each `relu_max_pool()` pair back as nn.ReLU(inplace=True), nn.MaxPool2d(2)."""
    import copy

    from stn.models.conv import ReLUMaxPool2d

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        names = list(parent._modules)
        for before, name in zip(names, names[1:]):
            if isinstance(parent._modules[name], ReLUMaxPool2d):
                assert isinstance(parent._modules[before], torch.nn.Identity)
                parent._modules[before] = torch.nn.ReLU(inplace=True)
                parent._modules[name] = torch.nn.MaxPool2d(2)
    return model


@pytest.mark.parametrize("table,dataset,name", [("table1", "TC", "CNN"), ("table1", "RTS", "ST-CNN-Aff"),
                                                ("table2", "SEQ64", "ST-CNN-Single"), ("table3", "PARTS48", "CNN")])
def test_fused_relu_max_pool_models_train_bit_for_bit_as_the_two_layers(table, dataset, name):
    """The CNNs' ReLU + 2x2 max-pool pairs run as one op (stn.ops.relu_max_pool2d): same state_dict keys as the
    two layers had, and under bf16 autocast in channels-last (the default run's steps) the same logits and the
    same gradient in every parameter, bit for bit."""
    from stn.ops import available_impls
    from stn.train import classification_loss

    if available_impls("cpu")["cpp"] is not None:
        pytest.skip("the C++ extension is not built")
    torch.manual_seed(0)
    if table == "table1":
        model, size, channels = zoo.build(name, input_spec(dataset), 60_000).model, input_spec(dataset).size, 1
    elif table == "table2":
        from stn.experiments import multidigit

        net = {"width": 0.1667, "fc": 32, "loc_filters": 8, "dropout": 0.0, "init": "he"}
        model, size, channels = multidigit.build_model(dataset, name, net, 0), 64, 1
    else:
        from stn.experiments import finegrained

        model, size, channels = finegrained.build_model(dataset, name, {"backbone": "small", "width": 8, "loc_channels": 8,
                                                                        "loc_fc": 16, "dropout": 0.0}, 0), 48, 1
    reference = _unfused(model)
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.rand(4, channels, size, size).contiguous(memory_format=torch.channels_last)
    for m in (model, reference):
        m.train().to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(x)
        target = torch.zeros(logits.shape[:-1], dtype=torch.long)
        classification_loss(logits.float(), target).backward()
        m.logits = logits
    assert torch.equal(model.logits, reference.logits)
    for (key, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), key
