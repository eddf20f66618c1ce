"""The fused affine transformer (stn.ops.affine_sample / transform_sample) against the unfused path."""
import pytest
import torch

from stn import Affine, Affine3D, Attention, SpatialTransformer, ThinPlateSpline, ops
from test_ops import device_of, require

FUSED_IMPLS = ["cpp", pytest.param("cuda", marks=pytest.mark.cuda)]
# (input shape, output size): C = 1 and C > 1, non-square, down- and over-sampled, 2-D and 3-D
SHAPES = [
    ((3, 1, 7, 9), (5, 11)),
    ((2, 3, 8, 6), (4, 3)),
    ((2, 1, 4, 5, 6), (3, 4, 5)),
    ((2, 2, 5, 4, 3), (6, 2, 3)),
]


def random_theta(n, d, dtype=torch.float64, seed=0, spread=0.4, shift=0.0):
    """Random affine matrices near the identity; `shift` pushes points outside the map."""
    g = torch.Generator().manual_seed(seed)
    m = torch.eye(d, d + 1, dtype=torch.float64) + spread * torch.randn(n, d, d + 1, generator=g, dtype=torch.float64)
    m[:, :, d] += shift * torch.sign(torch.randn(n, d, generator=g, dtype=torch.float64))
    return m.to(dtype)


def unfused(x, m, out_size, align_corners, impl):
    d = x.dim() - 2
    grid = (Affine3D() if d == 3 else Affine()).grid(m.reshape(m.shape[0], -1), out_size, align_corners)
    return ops.sample(x, grid, "bilinear", align_corners, impl)


def assert_near_float64_reference(x, m, go, out_size, impl, tols):
    """The fused kernel in float32 against the unfused reference in float64: output, d input and dθ
    (for the output gradient `go`) each within its relative tolerance in `tols`, by norm."""
    results = []
    for fn, dtype in ((lambda a, b: ops.affine_sample(a, b, out_size, False, impl), torch.float32),
                      (lambda a, b: unfused(a, b, out_size, False, "reference"), torch.float64)):
        a, b = x.to(dtype).requires_grad_(), m.to(dtype).requires_grad_()
        out = fn(a, b)
        results.append((out, *torch.autograd.grad(out, (a, b), go.to(dtype))))
    for ours, ref, tol in zip(*results, tols):
        assert ours.dtype == torch.float32
        assert (ours.double() - ref).norm() <= tol * ref.norm()


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + "->" + "x".join(map(str, s[1])))
@pytest.mark.parametrize("align_corners", [False, True])
def test_gradcheck(impl, shape, align_corners):
    require(impl, device_of(impl))
    dev = device_of(impl)
    in_shape, out_size = shape
    d = len(out_size)
    x = torch.randn(*in_shape, dtype=torch.float64, device=dev, requires_grad=True)
    m = random_theta(in_shape[0], d, spread=0.3).to(dev).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ops.affine_sample(a, b, out_size, align_corners, impl), (x, m), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + "->" + "x".join(map(str, s[1])))
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shift", [0.0, 1.5], ids=["inside", "partly-outside"])
def test_matches_unfused_float32(impl, shape, align_corners, shift):
    require(impl, device_of(impl))
    dev = device_of(impl)
    in_shape, out_size = shape
    d = len(out_size)
    x = torch.randn(*in_shape, device=dev)
    m = random_theta(in_shape[0], d, torch.float32, seed=3, shift=shift).to(dev)
    outs, grads = [], []
    for fn in (lambda a, b: ops.affine_sample(a, b, out_size, align_corners, impl),
               lambda a, b: unfused(a, b, out_size, align_corners, "reference")):
        a, b = x.clone().requires_grad_(), m.clone().requires_grad_()
        out = fn(a, b)
        go = torch.linspace(-1, 1, out.numel(), device=dev).view_as(out)
        outs.append(out)
        grads.append(torch.autograd.grad(out, (a, b), go))
    if shift:
        assert (outs[1] == 0).any() and (outs[1] != 0).any(), "the test should cover points inside and outside"
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-4 * grads[1][1].abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("scale", [0.1, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("in_shape,out_size", [((6, 1, 40, 36), (30, 20)), ((2, 1, 9, 10, 11), (8, 7, 6))],
                         ids=["2d", "3d"])
def test_one_channel_zooms_match_unfused(impl, in_shape, out_size, scale):
    """One channel in float32 at zooms from 10x in to 2.5x out: the CPU backward scatters d input in a
    zoom-dependent order (points 4 to 16 apart) and reduces dθ over chunks of several output rows."""
    require(impl, device_of(impl))
    dev = device_of(impl)
    d = len(out_size)
    x = torch.randn(*in_shape, device=dev)
    m = random_theta(in_shape[0], d, torch.float32, seed=7, spread=0.05, shift=0.1)
    m[:, :, :d] *= scale
    m = m.to(dev)
    go = torch.randn(in_shape[0], 1, *out_size, device=dev)
    assert_near_float64_reference(x, m, go, out_size, impl, (1e-5, 1e-5, 1e-4))


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("in_shape,out_size", [
    ((300, 2, 42, 42), (30, 36)),
    ((3, 1, 20, 18, 16), (17, 19, 21)),
    ((2, 2, 130, 100), (40, 50)),  # a plane of 13,000 points: past what the CUDA backward keeps on chip
    ((2, 1, 24, 24, 24), (10, 12, 14)),
    ((4, 32, 32, 32), (32, 32)),  # as many 32×32 planes as fit in a CUDA block's shared memory
    ((3, 11, 9, 13), (10, 7)),  # the CPU's 8x8 register transposes, with channels and positions left over
    ((2, 9, 5, 6, 7), (4, 5, 6)),
])
def test_large_batches_match_unfused(impl, in_shape, out_size):
    """Sizes that span many thread blocks and tiles, where partial dθ sums must be combined.

    The yardstick is the unfused path in float64. Output and d input are continuous in the
    sampling point and must agree to float32 rounding. dθ is not: the slope of the bilinear weights
    jumps at pixel edges, so a point that float32 rounding puts on the other side of an edge than
    float64 does moves dθ by a finite step. The unfused path in float32 is itself ~4e-3 off here,
    all of it from one such point; a wrong reduction would be off by O(1).
    """
    require(impl, device_of(impl))
    dev = device_of(impl)
    x = torch.randn(*in_shape, device=dev)
    m = random_theta(in_shape[0], len(out_size), torch.float32, seed=5, spread=0.2, shift=0.3).to(dev)
    go = torch.randn(in_shape[0], in_shape[1], *out_size, device=dev)
    assert_near_float64_reference(x, m, go, out_size, impl, (1e-5, 1e-5, 1e-2))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_matches_float32(dtype):
    require("cuda", "cuda")
    x = torch.rand(4, 3, 16, 16, device="cuda")
    m = random_theta(4, 2, torch.float32, seed=2).to("cuda")
    want = ops.affine_sample(x, m, (12, 12), False, "cuda")
    got = ops.affine_sample(x.to(dtype), m.to(dtype), (12, 12), False, "cuda")
    assert got.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    assert (got.float() - want).norm() <= tol * want.norm()


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("in_shape,out_size", [((2, 2, 6, 7), (5, 5)), ((2, 1, 6, 7), (5, 9)), ((2, 1, 4, 5, 6), (3, 4, 5))],
                         ids=["C2", "C1", "3d"])
def test_only_requested_gradients(impl, in_shape, out_size):
    """A transformer on the raw image needs dθ only; d input alone must match too."""
    require(impl, device_of(impl))
    dev = device_of(impl)
    x = torch.randn(*in_shape, dtype=torch.float64, device=dev)
    m = random_theta(2, len(out_size)).to(dev)
    go = torch.randn(*in_shape[:2], *out_size, dtype=torch.float64, device=dev)
    want = torch.autograd.grad(unfused(x.requires_grad_(), m.requires_grad_(), out_size, False, "reference"), (x, m), go)
    gm = torch.autograd.grad(ops.affine_sample(x.detach(), m, out_size, False, impl), m, go)[0]
    gx = torch.autograd.grad(ops.affine_sample(x, m.detach(), out_size, False, impl), x, go)[0]
    torch.testing.assert_close(gm, want[1])
    torch.testing.assert_close(gx, want[0])


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_attention_through_transform_sample(impl):
    """(s, tx, ty) gets its gradient through the affine matrix built from it."""
    require(impl, device_of(impl))
    dev = device_of(impl)
    x = torch.randn(3, 1, 12, 10, dtype=torch.float64, device=dev)
    theta = torch.tensor([[0.5, 0.2, -0.1], [1.2, -0.3, 0.4], [0.8, 0.0, 0.0]], dtype=torch.float64, device=dev)
    att = Attention()
    results = []
    for i in (impl, "reference"):
        t = theta.clone().requires_grad_()
        out = ops.transform_sample(x, att, t, (6, 5), impl=i)
        results.append((out, torch.autograd.grad((out * out).sum(), t)[0]))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_spatial_transformer_uses_the_fused_kernel(monkeypatch):
    """Affine transforms never build a grid on the compiled path; TPS still does."""
    require("cpp")

    def no_grid(*args, **kwargs):
        raise AssertionError("the fused path must not build a grid")

    st = SpatialTransformer(torch.nn.Flatten(), 64, "affine", (5, 6), impl="cpp")
    monkeypatch.setattr(st.transform, "grid", no_grid)
    out, _ = st(torch.rand(2, 1, 8, 8))
    assert out.shape == (2, 1, 5, 6)
    tps = SpatialTransformer(torch.nn.Flatten(), 64, ThinPlateSpline(3), (5, 6), impl="cpp")
    monkeypatch.setattr(tps.transform, "grid", no_grid)
    with pytest.raises(AssertionError, match="must not build a grid"):
        tps(torch.rand(2, 1, 8, 8))


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_identity_returns_the_input(impl):
    require(impl, device_of(impl))
    dev = device_of(impl)
    for shape in [(2, 3, 7, 9), (2, 1, 4, 6, 5)]:
        x = torch.rand(*shape, device=dev)
        d = x.dim() - 2
        m = torch.eye(d, d + 1, device=dev).expand(shape[0], d, d + 1)
        torch.testing.assert_close(ops.affine_sample(x, m, shape[2:], False, impl), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_non_finite_theta_gives_zero(impl):
    require(impl, device_of(impl))
    dev = device_of(impl)
    x = (torch.rand(3, 2, 5, 6, device=dev) + 1).requires_grad_()
    m = random_theta(3, 2, torch.float32).to(dev)
    m[0, 0, 2] = float("nan")
    m[1, 1, 1] = float("inf")
    m.requires_grad_()
    out = ops.affine_sample(x, m, (4, 4), False, impl)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[2] != 0).any()
    ref = unfused(x, m, (4, 4), False, "reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[0] == 0).all()


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_empty_batch(impl):
    require(impl, device_of(impl))
    dev = device_of(impl)
    x = torch.randn(0, 2, 5, 5, device=dev, requires_grad=True)
    m = torch.zeros(0, 2, 3, device=dev, requires_grad=True)
    out = ops.affine_sample(x, m, (3, 4), False, impl)
    assert out.shape == (0, 2, 3, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape and m.grad.shape == m.shape


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_empty_map_reads_zero(impl):
    """An input with no pixels is all padding: zero output and a zero dθ."""
    require(impl, device_of(impl))
    dev = device_of(impl)
    x = torch.randn(2, 1, 0, 5, device=dev, requires_grad=True)
    m = random_theta(2, 2, torch.float32).to(dev).requires_grad_()
    out = ops.affine_sample(x, m, (3, 4), False, impl)
    assert out.shape == (2, 1, 3, 4) and (out == 0).all()
    out.sum().backward()
    assert x.grad.shape == x.shape and (m.grad == 0).all()


def test_half_precision_on_the_cpu_takes_the_unfused_path():
    require("cpp")
    x = torch.rand(2, 1, 8, 8)
    theta = Affine().identity(2)
    out = ops.transform_sample(x.half(), Affine(), theta.half(), (8, 8), impl="cpp")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), x, atol=1e-3, rtol=0)
    with pytest.raises(RuntimeError, match="supports float32 and float64"):
        ops.affine_sample(x.half(), theta.half().view(2, 2, 3), (8, 8), impl="cpp")


def test_bad_arguments_are_named():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"needs a matrix of shape \(2, 2, 3\)"):
        ops.affine_sample(x, torch.zeros(2, 6), (4, 4))
    with pytest.raises(ValueError, match="2 output sizes"):
        ops.affine_sample(x, torch.zeros(2, 2, 3), (4, 4, 4))


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_the_ops_backward_is_recorded_in_cpp(impl):
    """csrc/autograd.cpp attaches each op's backward under the Autograd key: the graph's node is a C++ one (no
    Python runs for it), for the fused and the unfused op alike, and only a tensor that asks gets a gradient."""
    require(impl, device_of(impl))
    x = torch.rand(2, 1, 5, 5, device=device_of(impl), requires_grad=True)
    theta = random_theta(2, 2, torch.float32).to(device_of(impl)).flatten(1).requires_grad_()
    fused = ops.transform_sample(x, Affine(), theta, (4, 4), impl=impl)
    unfused = ops.sample(x, Affine().grid(theta.detach(), (4, 4)), impl=impl)
    assert fused.grad_fn.name() == "torch::autograd::CppNode<stn::(anonymous namespace)::AffineSample>"
    assert unfused.grad_fn.name() == "torch::autograd::CppNode<stn::(anonymous namespace)::Sample>"
    dx, = torch.autograd.grad(unfused.sum(), (x,))
    assert dx.shape == x.shape and dx.abs().sum() > 0


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_torch_compile_fullgraph(impl):
    require(impl, device_of(impl))
    x = torch.rand(2, 3, 9, 9, device=device_of(impl), requires_grad=True)
    m = random_theta(2, 2, torch.float32).to(device_of(impl)).requires_grad_()

    def f(a, b):
        return ops.transform_sample(a, Affine(), b.flatten(1), (5, 7), impl=impl)

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x, m)
    torch.testing.assert_close(out, f(x, m))
    g_compiled = torch.autograd.grad(out.square().sum(), (x, m))
    g_eager = torch.autograd.grad(f(x, m).square().sum(), (x, m))
    for a, b in zip(g_compiled, g_eager):
        torch.testing.assert_close(a, b)
