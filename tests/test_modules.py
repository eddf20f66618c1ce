"""SpatialTransformer: identity start, output sizes, parallel transformers, lr groups, torch.compile."""
import pytest
import torch
from torch import nn

from stn import Affine, SpatialTransformer, ThinPlateSpline, param_groups
from stn.modules import AvgPool, avg_pool
from stn.ops import available_impls


def loc_net(in_features, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())


def test_starts_at_identity_and_returns_theta():
    st = SpatialTransformer(loc_net(2 * 9 * 10), 8, "affine", (9, 10))
    x = torch.rand(4, 2, 9, 10)
    out, theta = st(x)
    assert theta.shape == (4, 6)
    torch.testing.assert_close(theta, Affine().identity(4))
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
    assert torch.count_nonzero(st.regressor.weight) == 0


def test_start_at_zooms_in_on_the_centre_and_restarts_the_regressor():
    st = SpatialTransformer(loc_net(9 * 9), 8, "affine", (3, 3))
    nn.init.normal_(st.regressor.weight)  # as if trained
    st.start_at(1 / 3)
    x = torch.arange(81.0).view(1, 1, 9, 9)
    out, theta = st(x)
    torch.testing.assert_close(theta, torch.tensor([[1 / 3, 0, 0, 0, 1 / 3, 0]]))
    torch.testing.assert_close(out, x[:, :, 3:6, 3:6])  # the centre 3x3 block, pixel for pixel
    assert torch.count_nonzero(st.regressor.weight) == 0


def test_down_and_over_sampling():
    x = torch.rand(2, 1, 12, 12)
    for size in [(6, 6), (24, 18)]:
        out, _ = SpatialTransformer(loc_net(144), 8, "attention", size)(x)
        assert out.shape == (2, 1, *size)


def test_parallel_transformers_concatenate_channels():
    st = SpatialTransformer(loc_net(2 * 8 * 8), 8, ThinPlateSpline(3), (8, 8), num_transformers=2)
    x = torch.rand(3, 2, 8, 8)
    with torch.no_grad():  # make the second transformer a horizontal flip
        bias = st.regressor.bias.view(2, -1, 2)
        bias[1, :, 0] *= -1
    out, theta = st(x)
    assert out.shape == (3, 4, 8, 8) and theta.shape == (3, 2, 18)
    first, second = out.chunk(2, dim=1)
    torch.testing.assert_close(first, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(second, x.flip(-1), atol=1e-5, rtol=0)


def test_loc_input_can_differ_from_sampled_input():
    st = SpatialTransformer(loc_net(16), 8, "affine", (8, 8))
    x = torch.rand(2, 1, 8, 8)
    out, _ = st(x, loc_input=nn.functional.avg_pool2d(x, 2))
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_param_groups_scale_localisation_lr():
    st = SpatialTransformer(loc_net(64), 8, "affine", (8, 8))
    model = nn.ModuleDict({"st": st, "head": nn.Linear(64, 10)})
    groups = param_groups(model, lr=0.1, loc_lr_mult=1e-4)
    assert [g["name"] for g in groups] == ["main", "localisation"]
    assert groups[1]["lr"] == pytest.approx(1e-5)
    loc_ids = {id(p) for p in groups[1]["params"]}
    assert loc_ids == {id(p) for p in st.localisation_parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model["head"].parameters()}
    torch.optim.SGD(groups, lr=0.1)  # accepted by an optimiser


def test_gradients_reach_localisation_net():
    st = SpatialTransformer(loc_net(64), 8, "affine", (8, 8))
    x = torch.rand(4, 1, 8, 8)
    out, _ = st(x)
    (out * torch.randn_like(out)).sum().backward()
    assert st.regressor.weight.grad.abs().sum() > 0


def test_torch_compile_fullgraph_forward_backward():
    impl = "cpp" if available_impls("cpu")["cpp"] is None else "reference"
    st = SpatialTransformer(loc_net(2 * 10 * 10), 8, "affine", (6, 6), impl=impl)
    with torch.no_grad():
        st.regressor.weight.normal_(0, 0.01)
    compiled = torch.compile(st, fullgraph=True)
    x = torch.rand(3, 2, 10, 10, requires_grad=True)
    out, theta = compiled(x)
    ref_out, _ = st(x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    grad_compiled = st.regressor.weight.grad.clone()
    st.zero_grad()
    st(x)[0].sum().backward()
    torch.testing.assert_close(grad_compiled, st.regressor.weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape, k, layout", [
    ((5, 1, 42, 42), 2, "contiguous"), ((5, 2, 42, 42), 2, "channels_last"), ((5, 2, 42, 42), 2, "contiguous"),
    ((3, 7, 12, 18), 3, "channels_last"), ((2, 1, 60, 60, 60), 4, "contiguous"), ((2, 3, 8, 12, 4), 2, "channels_last"),
    ((3, 2, 9, 10), 2, "contiguous"),  # 9 is not a multiple of 2: torch's pooling
    ((3, 2, 8, 10), 2, "transposed"),  # neither layout: torch's pooling
])
def test_avg_pool_is_torchs_pooling(shape, k, layout):
    x = torch.rand(shape, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    elif layout == "transposed":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    x.requires_grad_()
    pool = nn.functional.avg_pool2d if x.dim() == 4 else nn.functional.avg_pool3d
    ours, theirs = avg_pool(x, k), pool(x, k)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-14)
    if layout != "transposed" and not any(s % k for s in shape[2:]):
        assert ours.stride() == theirs.stride() or ours.is_contiguous() == x.is_contiguous()  # keeps x's layout
    grad = torch.randn_like(theirs)
    (g_ours,), (g_theirs,) = torch.autograd.grad(ours, x, grad), torch.autograd.grad(theirs, x, grad)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=1e-14)
    small = torch.rand(1, 2, *[2 * k] * (x.dim() - 2), dtype=torch.float64)
    if layout == "channels_last":
        small = small.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    assert torch.autograd.gradcheck(lambda t: avg_pool(t, k), small.requires_grad_())


def test_avg_pool_checks_its_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(N, C, D, H, W\), got shape \(4, 4\)"):
        avg_pool(torch.rand(4, 4), 2)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        AvgPool(0)(torch.rand(1, 1, 4, 4))
