"""Sampler correctness: gradients, agreement with grid_sample, edge cases, implementation selection."""
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import stn
from stn import ops
from stn.ops import extension

CPU_IMPLS = ["reference", "cpp"]
DIMS = {2: ((3, 2, 6, 7), (4, 5)), 3: ((2, 2, 4, 5, 6), (3, 4, 3))}


def require(impl, device="cpu"):
    reason = ops.available_impls(device)[impl]
    if reason is not None:
        if os.environ.get("CI") and impl == "cpp":
            pytest.fail(f"the C++ sampler must be available in CI: {reason}")
        if os.environ.get("STN_REQUIRE_CUDA") and impl == "cuda":
            pytest.fail(f"STN_REQUIRE_CUDA is set but the CUDA sampler is unavailable: {reason}")
        pytest.skip(reason)


def device_of(impl):
    return "cuda" if impl == "cuda" else "cpu"


ALL_IMPLS = ["reference", "cpp", pytest.param("cuda", marks=pytest.mark.cuda)]


def random_grid(batch, out_size, ndim, dtype=torch.float32, device="cpu", seed=0):
    """Random points in [-1.3, 1.3] with some exactly on +-1 and some on pixel centres."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(batch, *out_size, ndim, generator=g, dtype=torch.float64) * 2.6 - 1.3
    flat = grid.view(-1, ndim)
    flat[0::7] = 1.0
    flat[1::7] = -1.0
    flat[2::11, 0] = 1.0
    return grid.to(device=device, dtype=dtype)


def pixel_centre_grid(batch, in_size, out_size, align_corners, dtype, seed=1):
    """Points exactly on input pixel centres (normalised)."""
    g = torch.Generator().manual_seed(seed)
    coords = []
    for size in reversed(in_size):  # x, y, z
        idx = torch.randint(0, size, (batch, *out_size), generator=g).to(torch.float64)
        coords.append(idx * 2 / (size - 1) - 1 if align_corners else (2 * idx + 1) / size - 1)
    return torch.stack(coords, -1).to(dtype)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("align_corners", [False, True])
def test_gradcheck_bilinear(impl, ndim, align_corners):
    require(impl, device_of(impl))
    in_shape, out_size = DIMS[ndim]
    dev = device_of(impl)
    x = torch.randn(*in_shape, dtype=torch.float64, device=dev, requires_grad=True)
    # stay at least 5e-4 away from the kinks of the bilinear kernel that the points on +-1 sit on
    # (a shift of 1e-3 * U(0, 1) came within gradcheck's eps of them in about one run in ten)
    grid = random_grid(in_shape[0], out_size, ndim, torch.float64, dev)
    shift = torch.rand(grid.shape, generator=torch.Generator().manual_seed(ndim), dtype=torch.float64)
    grid = (grid + 5e-4 * (1 + shift).to(dev)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ops.sample(a, b, "bilinear", align_corners, impl), (x, grid), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_gradcheck_nearest_input(impl, ndim):
    require(impl, device_of(impl))
    in_shape, out_size = DIMS[ndim]
    dev = device_of(impl)
    x = torch.randn(*in_shape, dtype=torch.float64, device=dev, requires_grad=True)
    grid = random_grid(in_shape[0], out_size, ndim, torch.float64, dev) * 0.97
    assert torch.autograd.gradcheck(lambda a: ops.sample(a, grid, "nearest", False, impl), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("points", ["random", "pixel_centres"])
def test_matches_grid_sample(impl, ndim, align_corners, mode, points):
    require(impl, device_of(impl))
    dev = device_of(impl)
    in_shape, out_size = DIMS[ndim]
    x = torch.randn(*in_shape, device=dev, requires_grad=True)
    if points == "random":
        grid = random_grid(in_shape[0], out_size, ndim, device=dev)
    else:
        grid = pixel_centre_grid(in_shape[0], in_shape[2:], out_size, align_corners, torch.float32).to(dev)
    grid.requires_grad_()
    expected = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=align_corners)
    got = ops.sample(x, grid, mode, align_corners, impl)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    go = torch.randn_like(expected)
    want = torch.autograd.grad(expected, (x, grid), go, allow_unused=True, materialize_grads=True)
    have = torch.autograd.grad(got, (x, grid), go, allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(have[0], want[0], atol=1e-5, rtol=0)
    if mode == "bilinear" and points == "random":  # at pixel centres the sub-gradient is a convention
        torch.testing.assert_close(have[1], want[1], atol=1e-4, rtol=1e-5)
    if mode == "nearest":
        assert torch.count_nonzero(have[1]) == 0


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_non_contiguous_inputs(impl):
    require(impl, device_of(impl))
    dev = device_of(impl)
    x = torch.randn(3, 9, 8, 4, device=dev).permute(0, 3, 2, 1)  # (3, 4, 8, 9), non-contiguous
    grid = random_grid(3, (6, 2), 2, device=dev).transpose(1, 2)  # (3, 2, 6, 2), non-contiguous
    assert not x.is_contiguous() and not grid.is_contiguous()
    torch.testing.assert_close(ops.sample(x, grid, impl=impl), ops.sample(x.contiguous(), grid.contiguous(), impl=impl))


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_batch(impl, ndim):
    require(impl, device_of(impl))
    dev = device_of(impl)
    in_shape, out_size = DIMS[ndim]
    x = torch.randn(0, *in_shape[1:], device=dev, requires_grad=True)
    grid = torch.zeros(0, *out_size, ndim, device=dev, requires_grad=True)
    out = ops.sample(x, grid, impl=impl)
    assert out.shape == (0, in_shape[1], *out_size)
    out.sum().backward()
    assert x.grad.shape == x.shape and grid.grad.shape == grid.shape


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_non_finite_coordinates_give_zero(impl, mode):
    """Documented behaviour: a point with a NaN/inf coordinate samples zero and gets zero gradients."""
    require(impl, device_of(impl))
    dev = device_of(impl)
    x = (torch.rand(2, 3, 5, 6, device=dev) + 1).requires_grad_()
    grid = torch.zeros(2, 3, 4, 2, device=dev)
    grid[0, 0, 0, 0] = float("nan")
    grid[0, 1, 1, 1] = float("inf")
    grid[1, 2, 3, 0] = -float("inf")
    grid[1, 0, 2, :] = float("nan")
    grid[1, 1, 1, 0] = 1e30  # finite but far away: also zero
    grid.requires_grad_()
    out = ops.sample(x, grid, mode, impl=impl)
    bad = ~torch.isfinite(grid).all(-1) | (grid.abs() > 10).any(-1)
    assert torch.isfinite(out).all()
    assert (out.permute(0, 2, 3, 1)[bad] == 0).all()
    assert (out.permute(0, 2, 3, 1)[~bad] > 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    g = grid.grad if grid.grad is not None else torch.zeros_like(grid)
    assert (g[bad] == 0).all()


def test_non_finite_agree_across_impls(impls):
    x = torch.randn(1, 2, 4, 4)
    grid = torch.tensor([[[[float("nan"), 0.2], [0.3, float("inf")], [0.1, -0.4], [-float("inf"), -float("inf")]]]])
    outs = [ops.sample(x, grid, impl=i) for i in impls]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])


def test_nearest_grid_gradient_is_zero_compiled():
    require("cpp")
    x = torch.randn(2, 1, 5, 5, requires_grad=True)
    grid = (torch.rand(2, 3, 3, 2) * 2 - 1).requires_grad_()
    ops.sample(x, grid, "nearest", impl="cpp").sum().backward()
    assert torch.equal(grid.grad, torch.zeros_like(grid))
    assert x.grad.sum() == 18  # every present point passes its gradient to exactly one pixel


def test_half_and_bfloat16_on_cpu():
    require("cpp")
    x = torch.rand(2, 3, 8, 8)
    grid = random_grid(2, (5, 5), 2)
    ref = ops.sample(x, grid, impl="reference")
    for dtype in (torch.float16, torch.bfloat16):
        out = ops.sample(x.to(dtype), grid.to(dtype), impl="cpp")
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_bad_arguments_are_named():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="grid of shape"):
        ops.sample(x, torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError, match="mode"):
        ops.sample(x, torch.zeros(1, 4, 4, 2), mode="bicubic")
    with pytest.raises(ValueError, match="batch sizes differ"):
        ops.sample(x, torch.zeros(2, 4, 4, 2))
    with pytest.raises(TypeError, match="float64"):
        ops.sample(x, torch.zeros(1, 4, 4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown sampler"):
        ops.sample(x, torch.zeros(1, 4, 4, 2), impl="fortran")


def test_env_var_forces_implementation(monkeypatch):
    x, grid = torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 2, 2)
    monkeypatch.setenv("STN_SAMPLER", "reference")
    assert ops.resolve_impl("auto", x.device) == "reference"
    assert ops.resolve_impl("cpp", x.device) == "cpp" or ops.available_impls()["cpp"] is not None
    monkeypatch.setenv("STN_SAMPLER", "cuda")
    with pytest.raises(RuntimeError, match="STN_SAMPLER=cuda is unavailable: the cuda sampler needs CUDA tensors"):
        ops.sample(x, grid)
    monkeypatch.setenv("STN_SAMPLER", "gpu")
    with pytest.raises(ValueError, match="unknown sampler STN_SAMPLER='gpu'"):
        ops.sample(x, grid)


def test_fallback_warns_once_with_reason(monkeypatch):
    monkeypatch.setattr(extension, "_state", {"s": extension.ExtensionState(False, False, "testing: not built")})
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.delenv("STN_SAMPLER", raising=False)
    x, grid = torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops.sample(x, grid)
        ops.sample(x, grid)
    messages = [str(w.message) for w in caught if "reference sampler" in str(w.message)]
    assert messages == ["stn: using the reference sampler because testing: not built"]
    with pytest.raises(RuntimeError, match="testing: not built"):
        ops.sample(x, grid, impl="cpp")


def test_extension_is_built_in_ci():
    """CI builds the extension, CUDA sources included where nvcc exists, before the tests run."""
    if not os.environ.get("CI"):
        pytest.skip("only enforced in CI")
    st = extension.state()
    assert st.loaded, st.reason
    if extension.cuda_home():
        assert st.has_cuda, "nvcc exists, so the CUDA kernels must have been compiled"


# Library names of C++20 that C++17 lacks. torch up to 2.11 builds extensions with -std=c++17 (later ones with
# C++20), and a GPU machine may carry such a torch: std::bit_cast failed the build on session 44's H200.
CXX20_ONLY = ("std::bit_cast", "<bit>", "std::endian", "std::span", "<span>", "<concepts>", "std::popcount",
              "std::countr_zero", "std::countl_zero", "std::has_single_bit", "consteval", "<=>", "std::to_array",
              "std::ssize", "std::midpoint", "std::lerp", "std::is_constant_evaluated", "<numbers>", "std::numbers")


def test_compiled_sources_keep_to_cxx17():
    csrc = os.path.join(os.path.dirname(ops.__file__), "csrc")
    found = []
    for folder, _, files in os.walk(csrc):
        for name in files:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    code = line.split("//")[0]
                    found += [f"{name}:{number}: {word}" for word in CXX20_ONLY if word in code]
    assert not found, f"C++20-only names in the extension's sources (csrc/cpu/bits.h has a C++17 bit_cast): {found}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_dtypes_match_reference(dtype):
    require("cuda", "cuda")
    x = torch.rand(2, 3, 9, 8, device="cuda")
    grid = random_grid(2, (7, 6), 2, device="cuda")
    ref = ops.sample(x.double(), grid.double(), impl="reference")
    xx, gg = x.to(dtype).requires_grad_(), grid.to(dtype).requires_grad_()
    out = ops.sample(xx, gg, impl="cuda")
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 3e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    out.float().sum().backward()
    assert xx.grad.dtype == dtype and torch.isfinite(xx.grad.float()).all()


# The CUDA backward's shapes (stn/ops/csrc/cuda/sampler.cu): channel planes of d input in shared memory, in one
# chunk or several (then bfloat16 takes the global-atomics shape so that d grid rounds once); maps too large for
# a plane; more samples than a grid's y dimension holds.
CUDA_BACKWARD_SHAPES = {
    "plane, one chunk": ((3, 4, 9, 8), (7, 6)),
    "planes, two chunks": ((2, 30, 24, 24), (11, 13)),
    "map past a plane": ((2, 2, 120, 110), (9, 10)),
    "3-D map past a plane": ((1, 2, 24, 24, 24), (5, 6, 7)),
    "70,000 samples": ((70000, 1, 3, 3), (2, 2)),
}


@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_BACKWARD_SHAPES, ids=list(CUDA_BACKWARD_SHAPES))
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grads", ["both", "input", "grid"])
def test_cuda_backward_shapes_match_reference(shape, mode, dtype, grads):
    require("cuda", "cuda")
    if grads != "both" and (dtype != torch.float32 or shape != "planes, two chunks"):
        pytest.skip("one gradient alone: checked on one shape and dtype")
    in_size, out_size = CUDA_BACKWARD_SHAPES[shape]
    g = torch.Generator().manual_seed(3)
    x = torch.rand(in_size, generator=g).to(dtype)
    grid = random_grid(in_size[0], out_size, len(out_size), seed=4).to(dtype)
    weights = torch.rand(in_size[0], in_size[1], *out_size, generator=g)
    want = {"input": grads != "grid", "grid": grads != "input"}

    def run(impl, device, dt):
        xx = x.to(device, dt).requires_grad_(want["input"])
        gg = grid.to(device, dt).requires_grad_(want["grid"])
        out = ops.sample(xx, gg, mode, False, impl)
        leaves = [t for t in (xx, gg) if t.requires_grad]
        loss = (out.to(torch.float64) * weights.to(device, torch.float64)).sum()
        # nearest's d grid is zero, and the reference leaves the grid out of its graph: zeros, not an error
        grads_ = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
        return [t.double().cpu() for t in (out, *grads_)]

    ref = run("reference", "cpu", torch.float64)
    got = run("cuda", "cuda", dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, a, b in zip(["output", *[k for k in want if want[k]]], got, ref):
        scale = b.abs().max().item() or 1.0
        assert (a - b).abs().max().item() <= tol * scale, f"{shape}, {mode}, {dtype}: {name} differs"


# ---- relu_max_pool2d: ReLU + 2x2 max pooling in one op ------------------------------------------------------

def _pool_inputs(dtype, channels_last, shape):
    """Integers in [-3, 3]: most windows hold ties (the first maximum must win), many are all <= 0. (Rows of 35 and
    33 windows reach the vectorised loops' bodies as well as their remainders; odd widths misalign the rows.)"""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, shape, generator=g).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 9, 8), (2, 39, 12, 13), (2, 1, 7, 7), (1, 3, 2, 2), (2, 3, 6, 70), (1, 2, 5, 67),
                                   (2, 8, 6, 70), (2, 20, 9, 12), (1, 16, 4, 5), (1, 32, 3, 4),  # C as a constant
                                   # runs of whole vectors, the last overlapping (bf16: 32 a vector, float 16,
                                   # double 8), and a multiple of the vector as one run
                                   (2, 46, 6, 7), (1, 17, 4, 6), (1, 13, 5, 4), (1, 64, 4, 6)])
def test_relu_max_pool2d_matches_aten_bitwise(dtype, channels_last, shape):
    require("cpp")
    x = _pool_inputs(dtype, channels_last, shape)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = ops.relu_max_pool2d(ours, impl="cpp")
    ref = F.max_pool2d(F.relu(theirs), 2)
    assert y.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2) and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last and shape[1] > 1 else torch.contiguous_format)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    y.backward(g)
    ref.backward(g)
    assert torch.equal(y, ref)
    assert torch.equal(ours.grad, theirs.grad)  # the same input of each tied window, nothing where max <= 0
    if shape[2] % 2:
        assert not ours.grad[:, :, -1].any()  # the dropped odd row


def test_relu_max_pool2d_nan_propagates_and_reference_path():
    require("cpp")
    x = torch.tensor([[[[1.0, float("nan")], [2.0, 3.0]]]], requires_grad=True)
    y = ops.relu_max_pool2d(x, impl="cpp")
    assert torch.isnan(y).all()
    y.sum().backward()
    assert x.grad.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]
    z = torch.randn(2, 3, 6, 6)
    assert torch.equal(ops.relu_max_pool2d(z, impl="reference"), F.max_pool2d(F.relu(z), 2))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) with H, W >= 2"):
        ops.relu_max_pool2d(torch.zeros(1, 1, 1, 4))


def test_relu_max_pool2d_op_registration():
    """Schemas, fake (meta) kernels and autograd as torch.library.opcheck sees them; the fake kernel's layout
    is the CPU kernel's."""
    require("cpp")
    x = torch.randn(2, 3, 6, 5).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.stn.relu_max_pool2d_forward.default, (x,))
    out, which = torch.ops.stn.relu_max_pool2d_forward(x)
    torch.library.opcheck(torch.ops.stn.relu_max_pool2d_backward.default, (torch.randn_like(out), which, [2, 3, 6, 5]))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake_out, fake_which = torch.ops.stn.relu_max_pool2d_forward(mode.from_tensor(x))
    assert fake_out.stride() == out.stride() and fake_which.dtype == torch.uint8


# ---- fold: col2im into float32 or wider, the last step of InputGradConv2d's input gradient --------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("channels, size, kernel, padding", [
    (1, (28, 28), (9, 9), (0, 0)),  # R's ST-CNN conv1
    (1, (21, 21), (9, 9), (4, 4)),  # pooled RTS: 'same' padding
    (2, (13, 40), (5, 3), (1, 2)),  # rectangular, several channels, wider than a vector
    (1, (9, 9), (9, 9), (0, 0)),  # one column position
])
def test_fold_matches_aten_bitwise(dtype, channels, size, kernel, padding):
    """The kernel sums each element's column entries in ATen's order, so it equals F.fold of the columns widened to
    float32 (float64 for float64) bit for bit, not only to rounding."""
    require("cpp")
    oh, ow = (size[i] + 2 * padding[i] - kernel[i] + 1 for i in range(2))
    g = torch.Generator().manual_seed(0)
    cols = torch.randn(3, channels * kernel[0] * kernel[1], oh * ow, generator=g).mul(1e3 ** torch.rand(1, generator=g)).to(dtype)
    out = ops.fold(cols, size, kernel, padding, impl="cpp")
    ref = F.fold(cols.to(torch.promote_types(dtype, torch.float32)), size, kernel, padding=padding)
    assert out.dtype == ref.dtype and out.shape == (3, channels, *size)
    assert torch.equal(out, ref)
    assert torch.equal(ops.fold(cols, size, kernel, padding, impl="reference"), ref)


def test_fold_checks_and_registration():
    require("cpp")
    with pytest.raises(ValueError, match=r"columns must be \(N, C\*kh\*kw, L\)"):
        ops.fold(torch.zeros(81, 400), (28, 28), (9, 9))
    with pytest.raises(RuntimeError, match="do not fit a 28x28 map"):
        ops.fold(torch.zeros(1, 81, 399), (28, 28), (9, 9))
    cols = torch.randn(2, 2 * 9, 16).bfloat16()
    torch.library.opcheck(torch.ops.stn.fold.default, (cols, [6, 6], [3, 3], [0, 0]), test_utils=("test_schema", "test_faketensor"))


# ---- homography_points: the projective grid generator's divide, forward and backward ---------------------------

def _projective_grid(compiled, theta, size, grad, monkeypatch):
    """(points, dθ) of a projective grid through the op (compiled) or through the PyTorch ops."""
    from stn import transforms

    if not compiled:
        monkeypatch.setattr(transforms, "_compiled_points", lambda m: False)
    else:
        assert transforms._compiled_points(theta.new_empty(1, 3, 3))
    theta = theta.clone().requires_grad_()
    points = transforms.Projective().grid(theta, (size, size))
    (d_theta,) = torch.autograd.grad(points, theta, grad)
    return points.detach(), d_theta


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, size", [(64, 42), (5, 7)])
def test_homography_points_match_the_pytorch_path(dtype, n, size, monkeypatch):
    """The op's points and the θ gradient through it are the PyTorch ops' (the same arithmetic: on this code's
    development machine bit for bit in float32, which the state_dict hashes of training runs confirm; MKL's matmul
    may round differently elsewhere, so the test allows a few ulps). A horizon crossing the grid holds some w."""
    require("cpp")
    from stn import transforms

    g = torch.Generator().manual_seed(0)
    theta = transforms.Projective().identity(n, dtype=dtype) + 0.1 * torch.randn(n, 8, generator=g, dtype=dtype)
    theta[0, 6:] = torch.tensor([-2.0, 0.0])  # w = 1 - 2x: zero on the column x = 0.5 of a 42-wide grid (held)
    grad = torch.randn(n, size, size, 2, generator=g, dtype=dtype)
    ours, theirs = (_projective_grid(c, theta, size, grad, monkeypatch) for c in (True, False))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-8, "atol": 1e-10}
    torch.testing.assert_close(ours[0], theirs[0], **tol)
    torch.testing.assert_close(ours[1], theirs[1], **{k: v * 100 for k, v in tol.items()})
    m = transforms.Projective().matrix(theta)
    basis = transforms.Projective()._cached_basis((size, size), False, torch.device("cpu"), dtype)
    points, inv, held = torch.ops.stn.homography_points(m, basis, 1e-6)
    w = torch.einsum("nf,pf->np", m[:, 2], basis)
    assert torch.equal(held, w.abs() < 1e-6) and (held[0].any() or n < 64)
    q = torch.ops.stn.homography_points_backward(torch.ones_like(points), points, inv, held)
    assert q.shape == (n, 3, size * size) and not q[:, 2][held].any()  # a held w passes no gradient


def test_homography_points_checks_and_registration():
    require("cpp")
    with pytest.raises(RuntimeError, match=r"matrix must be \(N, 3, 3\) and basis \(P, 3\)"):
        torch.ops.stn.homography_points(torch.zeros(2, 2, 3), torch.zeros(5, 3), 1e-6)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        torch.ops.stn.homography_points(torch.zeros(2, 3, 3), torch.zeros(5, 3, dtype=torch.float64), 1e-6)
    with pytest.raises(RuntimeError, match=r"grad and points must be \(N, P, 2\)"):
        torch.ops.stn.homography_points_backward(torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), torch.zeros(2, 5),
                                                 torch.zeros(2, 5, dtype=torch.bool))
    m, basis = torch.randn(2, 3, 3), torch.randn(6, 3)
    torch.library.opcheck(torch.ops.stn.homography_points.default, (m, basis, 1e-6),
                          test_utils=("test_schema", "test_faketensor"))
    points, inv, held = torch.ops.stn.homography_points(m, basis, 1e-6)
    torch.library.opcheck(torch.ops.stn.homography_points_backward.default, (torch.randn(2, 6, 2), points, inv, held),
                          test_utils=("test_schema", "test_faketensor"))
