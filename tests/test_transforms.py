"""Grid generators: identity, exact shifts and rotations, TPS and projective properties, learnable basis."""
import math

import pytest
import torch

import stn
from stn import ops
from stn.transforms import (
    TRANSFORMS,
    Affine,
    Affine3D,
    Attention,
    LearnableBasis,
    Projective,
    ThinPlateSpline,
    basis_points_reference,
    make_transform,
    regular_grid,
    rotation_matrix_3d,
)

TWO_D = [Affine, Attention, Projective, ThinPlateSpline]


def impl_list():
    return [i for i, why in ops.available_impls("cpu").items() if why is None]


@pytest.mark.parametrize("cls", TWO_D)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])  # TPS float32: up to 1.2e-6 over 300 draws
def test_identity_returns_input(cls, dtype, tol):
    t = cls()
    x = torch.rand(3, 2, 7, 11, dtype=dtype)  # non-square
    theta = t.identity(3, dtype=dtype)
    assert theta.shape == (3, t.num_params)
    grid = t.grid(theta, (7, 11))
    assert grid.shape == (3, 7, 11, 2)
    for impl in impl_list():
        torch.testing.assert_close(ops.sample(x, grid, impl=impl), x, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_identity_3d_returns_input(dtype, tol):
    t = Affine3D()
    x = torch.rand(2, 1, 4, 5, 6, dtype=dtype)
    grid = t.grid(t.identity(2, dtype=dtype), (4, 5, 6))
    assert grid.shape == (2, 4, 5, 6, 3)
    for impl in impl_list():
        torch.testing.assert_close(ops.sample(x, grid, impl=impl), x, atol=tol, rtol=0)


@pytest.mark.parametrize("make", [Affine, Attention, Projective, ThinPlateSpline, lambda: ThinPlateSpline(4), Affine3D,
                                  lambda: LearnableBasis(Affine(), (5, 6))])
def test_scaling_maps_every_point_to_its_multiple(make):
    t = make().double()
    size = (5, 6, 4)[: t.ndim]
    theta = t.scaling(0.6, 2, dtype=torch.float64)
    assert theta.shape == (2, t.num_params)
    torch.testing.assert_close(t.grid(theta, size), 0.6 * t.grid(t.identity(2, dtype=torch.float64), size))


def test_scaling_refuses_a_fixed_scale():
    with pytest.raises(ValueError, match="fixed scale"):
        Attention(scale=0.5).scaling(0.6, 1)
    torch.testing.assert_close(Attention(scale=0.5).scaling(1.0, 2), Attention(scale=0.5).identity(2))


def test_grid_matches_affine_grid():
    theta = torch.randn(4, 6, dtype=torch.float64)
    for ac in (False, True):
        ours = Affine().grid(theta, (5, 9), align_corners=ac)
        theirs = torch.nn.functional.affine_grid(theta.view(4, 2, 3), [4, 1, 5, 9], align_corners=ac)
        torch.testing.assert_close(ours, theirs)
    theta3 = torch.randn(2, 12, dtype=torch.float64)
    ours = Affine3D().grid(theta3, (3, 4, 5))
    theirs = torch.nn.functional.affine_grid(theta3.view(2, 3, 4), [2, 1, 3, 4, 5], align_corners=False)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["affine", "attention", "projective"])
def test_translation_by_one_pixel_shifts_a_ramp(name):
    w = 8
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 1, 5, w).clone()
    t = make_transform(name)
    theta = t.identity(1, dtype=torch.float64)
    tx_index = {"affine": 2, "attention": 1, "projective": 2}[name]
    theta[0, tx_index] = 2.0 / w
    grid = t.grid(theta, (5, w))
    expected = torch.cat([ramp[..., 1:], torch.zeros(1, 1, 5, 1, dtype=torch.float64)], dim=-1)
    for impl in impl_list():
        torch.testing.assert_close(ops.sample(ramp, grid, impl=impl), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rotations_by_90_degrees_permute_a_volume(axis):
    n = 5
    vol = torch.rand(1, 1, n, n, n, dtype=torch.float64)  # (D, H, W) <-> (z, y, x)
    angles = torch.zeros(1, 3, dtype=torch.float64)
    angles[0, axis] = math.pi / 2
    rot = rotation_matrix_3d(angles)
    theta = torch.cat([rot, torch.zeros(1, 3, 1, dtype=torch.float64)], dim=2).reshape(1, 12)
    grid = Affine3D().grid(theta, (n, n, n))
    # The output at target (x, y, z) reads the source at R (x, y, z); mirror coordinate c -> -c is index i -> n-1-i.
    d, h, w = torch.meshgrid(torch.arange(n), torch.arange(n), torch.arange(n), indexing="ij")
    xyz = torch.stack([w, h, d]).reshape(3, -1).to(torch.float64) - (n - 1) / 2
    src = (rot[0] @ xyz).round().long() + (n - 1) // 2
    expected = vol[0, 0][src[2], src[1], src[0]].reshape(1, 1, n, n, n)
    for impl in impl_list():
        out = ops.sample(vol, grid, impl=impl)
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
        # a permutation: same multiset of values
        torch.testing.assert_close(out.flatten().sort().values, vol.flatten().sort().values)


def test_tps_identity_and_interpolation():
    tps = ThinPlateSpline(4)
    assert tps.control_points.shape == (16, 2) and tps.num_params == 32
    ident = tps.identity(2, dtype=torch.float64)
    torch.testing.assert_close(ident[0], tps.control_points.reshape(-1))
    grid = tps.grid(ident, (6, 9))
    torch.testing.assert_close(grid[0].reshape(-1, 2), regular_grid((6, 9), dtype=torch.float64), atol=1e-10, rtol=0)
    targets = (tps.control_points + 0.1 * torch.randn(16, 2, dtype=torch.float64)).reshape(1, -1)
    mapped = tps.transform_points(targets, tps.control_points)
    torch.testing.assert_close(mapped[0], targets.view(16, 2), atol=1e-10, rtol=0)


def test_tps_gradients_finite_at_control_points():
    tps = ThinPlateSpline(4)
    theta = (tps.identity(1, dtype=torch.float64) + 0.05).requires_grad_()
    grid = tps.grid(theta, (4, 4), align_corners=True)  # grid points coincide with the control points
    torch.testing.assert_close(
        grid.reshape(-1, 2), (tps.control_points + 0.05).to(grid.dtype), atol=1e-10, rtol=0
    )
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    ops.sample(x, grid.to(x.dtype), align_corners=True).sum().backward()
    assert torch.isfinite(theta.grad).all()
    r2 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    from stn.transforms import _tps_kernel

    v = _tps_kernel(r2)
    v.sum().backward()
    assert torch.equal(v, torch.zeros(3, dtype=torch.float64)) and torch.isfinite(r2.grad).all()


def test_projective_corners_map_to_targets():
    corners = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64)
    targets = corners + 0.2 * torch.randn(3, 4, 2, dtype=torch.float64)
    theta = Projective.fit(corners.expand(3, 4, 2), targets)
    mapped = Projective().transform_points(theta, corners)
    torch.testing.assert_close(mapped, targets, atol=1e-10, rtol=0)


def test_projective_divide_is_guarded():
    theta = torch.tensor([[1.0, 0, 0, 0, 1, 0, -1.0, 0]])  # w = 1 - x vanishes at x = 1
    grid = Projective().grid(theta.requires_grad_(), (4, 8), align_corners=True)
    assert torch.isfinite(grid).all()
    grid.sum().backward()
    assert torch.isfinite(theta.grad).all()


@pytest.mark.parametrize("t", [Projective(), ThinPlateSpline(3), Affine3D()], ids=["projective", "tps", "affine3d"])
def test_grid_gradients_match_autograd_and_finite_differences(t):
    torch.manual_seed(0)
    size = (3, 4, 5)[: t.ndim]
    theta = (t.identity(3, dtype=torch.float64) + 0.1 * torch.randn(3, t.num_params, dtype=torch.float64))
    if isinstance(t, Projective):
        theta[0, 6:] = torch.tensor([-4 / 3, 0.0], dtype=torch.float64)  # w = 1 - 4x/3 vanishes at x = 0.75
    theta.requires_grad_()
    basis = t.basis(regular_grid(size, dtype=torch.float64))
    grad = torch.randn(3, math.prod(size), t.ndim, dtype=torch.float64)
    ours = t.grid(theta, size).reshape(3, -1, t.ndim)
    plain = basis_points_reference(t.matrix(theta), basis, t.divide_eps)
    if isinstance(t, Projective):
        assert (ours.abs() > 1e5).any()  # the column at x = 0.8 of x = 0.75 was held at eps
    torch.testing.assert_close(ours, plain, atol=1e-12, rtol=1e-15)  # an ulp of a held point (~1e5)
    torch.testing.assert_close(torch.autograd.grad(ours, theta, grad)[0], torch.autograd.grad(plain, theta, grad)[0],
                               atol=1e-9, rtol=1e-9)
    smooth = theta.detach().clone()
    if isinstance(t, Projective):
        smooth[0, 6] = -0.2  # finite differences need w away from the guard
    assert torch.autograd.gradcheck(lambda th: t.grid(th, size), (smooth.requires_grad_(),))


def test_learnable_basis_gradient_matches_finite_differences():
    torch.manual_seed(0)
    t = LearnableBasis(Projective(), (3, 4))
    t.learned_basis.data = t.learned_basis.data.double()
    theta = Projective().identity(2, dtype=torch.float64) + 0.05 * torch.randn(2, 8, dtype=torch.float64)
    basis = t.learned_basis.detach().clone().requires_grad_()
    check = lambda b: torch.ops.aten.alias(t._apply_basis(theta, b))  # noqa: E731
    assert torch.autograd.gradcheck(check, (basis,))


def test_bad_theta_shape_names_expected_shape():
    with pytest.raises(ValueError, match=r"theta of shape \(N, 6\)"):
        Affine().grid(torch.zeros(2, 5), (4, 4))
    with pytest.raises(ValueError, match="unknown transform"):
        make_transform("similarity")
    with pytest.raises(ValueError, match="out_size must have 3"):
        Affine3D().grid(torch.zeros(1, 12), (4, 4))


def test_learnable_basis_starts_at_base_and_learns():
    base = Affine()
    t = LearnableBasis(base, (5, 6))
    theta = base.identity(2) + 0.1 * torch.randn(2, 6)
    torch.testing.assert_close(t.grid(theta, (5, 6)), base.grid(theta, (5, 6)))
    x = torch.rand(2, 1, 5, 6)
    ops.sample(x, t.grid(theta, (5, 6))).square().sum().backward()
    assert t.learned_basis.grad is not None and t.learned_basis.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="built for out_size"):
        t.grid(theta, (4, 4))


def test_registry_covers_every_transform():
    assert set(TRANSFORMS) == {"affine", "attention", "projective", "tps", "affine3d"}
    for name in TRANSFORMS:
        t = make_transform(name)
        assert t.identity(1).shape == (1, t.num_params)
