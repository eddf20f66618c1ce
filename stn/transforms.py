"""Grid generators (paper Sect. 3.2): map the output's regular grid G to sampling points T_θ(G).

Every transform is written in the paper's generic form T_θ(G) = M_θ · B(G): a per-sample
matrix M_θ built from θ times a fixed basis B evaluated at the target points. Affine,
attention and 3-D affine use the homogeneous grid as B; the thin-plate spline folds its
once-solved linear system into B; the projective transform adds a homogeneous divide.
`LearnableBasis` turns any of them into the variant of Sect. 3.2 whose B is learnt.

Coordinates are normalised to [-1, 1] over the spatial *bounds* of a map (align_corners=False,
pixel centres at (2i + 1) / S - 1); points come in (x, y[, z]) order, as grid_sample expects.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Transform",
    "Affine",
    "Attention",
    "Projective",
    "ThinPlateSpline",
    "Affine3D",
    "LearnableBasis",
    "regular_grid",
    "make_transform",
    "TRANSFORMS",
]


def _axis(size: int, align_corners: bool, device=None, dtype=None) -> Tensor:
    if align_corners:
        if size == 1:
            return torch.zeros(1, device=device, dtype=dtype)
        return torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    i = torch.arange(size, device=device, dtype=torch.float64)
    return ((2 * i + 1) / size - 1).to(dtype)


def regular_grid(out_size: Sequence[int], align_corners: bool = False, device=None, dtype=None) -> Tensor:
    """The target grid G as a (P, ndim) tensor of (x, y[, z]) points, rows in (D, H, W) order."""
    dtype = dtype or torch.get_default_dtype()
    axes = [_axis(s, align_corners, device, dtype) for s in out_size]  # (D,) H, W
    mesh = torch.meshgrid(*axes, indexing="ij")
    # meshgrid gives (z, y, x) or (y, x); points want (x, y, z).
    return torch.stack([m.reshape(-1) for m in reversed(mesh)], dim=-1)


class Transform(nn.Module):
    """A parameterised grid generator T_θ = M_θ · B with one interface for every transformation.

    Subclasses define `num_params`, `ndim`, `_identity_params()`, `basis(points)` (P, F) and
    `matrix(theta)` (N, rows, F); rows are the points, or with `divide_eps` set (projective) their
    homogeneous coordinates, divided by the last row kept at least `divide_eps` from zero.
    """

    ndim: int = 2
    num_params: int
    divide_eps: float | None = None

    def _identity_params(self) -> Tensor:
        raise NotImplementedError

    def basis(self, points: Tensor) -> Tensor:
        raise NotImplementedError

    def matrix(self, theta: Tensor) -> Tensor:
        raise NotImplementedError

    affine: bool = False  # T_θ is an affine map of the target grid, so the fused sampler applies

    def affine_matrix(self, theta: Tensor) -> Tensor | None:
        """θ as an affine matrix (N, ndim, ndim+1) acting on the normalised target grid, for the
        fused sampler (stn.ops.affine_sample); None for transforms that are not affine."""
        if not self.affine:
            return None
        self.check_theta(theta)
        return self.matrix(theta)

    def __init__(self) -> None:
        super().__init__()
        self._basis_cache: dict = {}

    def identity(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """θ of the identity transform, shape (batch_size, num_params)."""
        p = self._identity_params().to(device=device, dtype=dtype or torch.get_default_dtype())
        return p.unsqueeze(0).repeat(batch_size, 1)

    def scaling(self, scale: float, batch_size: int, device=None, dtype=None) -> Tensor:
        """θ of x ↦ scale·x, shape (batch_size, num_params): below 1 a window zoomed in on the centre.

        The identity's parameters scaled by `scale`, which is that map for every transform here: their
        identity holds only the linear part (affine, projective: the diagonal; attention: s; a TPS: its
        control points, and a TPS reproduces linear maps). A transform whose identity has no scale to
        multiply (attention with a fixed scale) has only its identity (scale 1); any other scale raises ValueError.

        Example: ``Affine().scaling(0.5, 1)`` is ``[[0.5, 0, 0, 0, 0.5, 0]]``.
        """
        return scale * self.identity(batch_size, device, dtype)

    def check_theta(self, theta: Tensor) -> None:
        if theta.dim() != 2 or theta.shape[1] != self.num_params:
            raise ValueError(
                f"{type(self).__name__} expects theta of shape (N, {self.num_params}), got {tuple(theta.shape)}"
            )

    def transform_points(self, theta: Tensor, points: Tensor) -> Tensor:
        """Map target points (P, ndim) to source points (N, P, ndim)."""
        self.check_theta(theta)
        basis = self.basis(points.to(theta.dtype))
        return self._apply_basis(theta, basis)

    def _apply_basis(self, theta: Tensor, basis: Tensor) -> Tensor:
        return _BasisPoints.apply(self.matrix(theta), basis, self.divide_eps)

    def grid(self, theta: Tensor, out_size: Sequence[int], align_corners: bool = False) -> Tensor:
        """Sampling grid of shape (N, *out_size, ndim), differentiable in θ."""
        self.check_theta(theta)
        out_size = tuple(int(s) for s in out_size)
        if len(out_size) != self.ndim:
            raise ValueError(f"{type(self).__name__} is {self.ndim}-D; out_size must have {self.ndim} entries, got {out_size}")
        basis = self._cached_basis(out_size, align_corners, theta.device, theta.dtype)
        points = self._apply_basis(theta, basis)
        return points.reshape(theta.shape[0], *out_size, self.ndim)

    def _cached_basis(self, out_size, align_corners, device, dtype) -> Tensor:
        key = (out_size, align_corners, str(device), dtype)
        basis = self._basis_cache.get(key)
        if basis is None:
            with torch.no_grad():
                basis = self.basis(regular_grid(out_size, align_corners, device, torch.float64)).to(dtype)
            if len(self._basis_cache) >= 16:
                self._basis_cache.clear()
            self._basis_cache[key] = basis
        return basis

    def _apply(self, fn, recurse=True):  # .to()/.cuda() move buffers: drop bases built for the old device
        self._basis_cache = {}
        return super()._apply(fn, recurse)


class _BasisPoints(torch.autograd.Function):
    """Points (N, P, D) = M (N, R, F) · Bᵀ (F, P), then with `eps` the homogeneous divide by the last
    row (|w| held at least eps from zero, sign kept; a held w passes no gradient), as one autograd node.

    Autograd through matmul, divide and where spent 2.3 ms per projective grid (64 × 42²) on the CPU,
    mostly on broadcasts over the size-2 point axis; here every step runs on (N, rows, P) planes and both
    products are single 2-D mms (`python -m stn.bench grid` times it against `basis_points_reference`). With the
    compiled extension, on the CPU in float32 or float64, the divide's forward and its point gradients are one op
    each (stn::homography_points, the same values bit for bit); dM is still the mm below.
    """

    @staticmethod
    def forward(ctx, matrix: Tensor, basis: Tensor, eps: float | None) -> Tensor:
        ctx.compiled = eps is not None and _compiled_points(matrix)
        if ctx.compiled:  # the same points, inv and held in one pass (stn/ops/csrc/cpu/homography.cpp)
            points, inv, held = torch.ops.stn.homography_points(matrix, basis, eps)
            ctx.eps = eps
            ctx.save_for_backward(matrix, basis, points, inv, held)
            return points
        n, r, f = matrix.shape
        rows = torch.mm(matrix.reshape(n * r, f), basis.t()).view(n, r, -1)
        if eps is None:
            ctx.eps = None
            ctx.save_for_backward(matrix, basis)
            return rows.transpose(1, 2).contiguous()
        w = rows[:, -1]
        held = w.abs() < eps
        inv = torch.where(held, _signed_eps(w, eps), w).reciprocal_()
        points = torch.mul(rows[:, :-1].transpose(1, 2), inv.unsqueeze(2))
        ctx.eps = eps
        ctx.save_for_backward(matrix, basis, points, inv, held)
        return points

    @staticmethod
    def backward(ctx, grad: Tensor):
        matrix, basis, *divide = ctx.saved_tensors
        if ctx.compiled:  # (N, D + 1, P), as below
            q = torch.ops.stn.homography_points_backward(grad, *divide)
        else:
            q = grad.transpose(1, 2).contiguous()  # (N, D, P)
            if divide:  # d(x/w): grad/w to the numerator rows, -Σ grad·x/w to w
                n, d, p = q.shape
                points, inv, held = divide
                q, gp = grad.new_empty(n, d + 1, p), q
                torch.mul(gp, inv.unsqueeze(1), out=q[:, :d])
                w = torch.mul(q[:, 0], points[..., 0], out=q[:, d])
                for i in range(1, d):
                    w.addcmul_(q[:, i], points[..., i])
                w.neg_().masked_fill_(held, 0)
        flat = q.view(-1, q.shape[2])
        d_matrix = torch.mm(basis.t(), flat.t()).t().reshape(matrix.shape) if ctx.needs_input_grad[0] else None
        d_basis = torch.mm(flat.t(), matrix.reshape(flat.shape[0], -1)) if ctx.needs_input_grad[1] else None
        return d_matrix, d_basis, None


def _signed_eps(w: Tensor, eps: float) -> Tensor:
    """-eps where w < 0, else eps, in w's dtype and on its device: the value a |w| < eps divisor is held at. Filled on
    the device (new_full), not copied from the host (new_tensor), which a CUDA-graph recording refuses."""
    return torch.where(w < 0, w.new_full((), -eps), w.new_full((), eps))


def _compiled_points(matrix: Tensor) -> bool:
    """Whether _BasisPoints's divide runs as stn::homography_points: a CPU float32/float64 (N, 3, 3) matrix and the compiled
    extension loaded (with STN_SAMPLER=reference, or no extension, the PyTorch ops)."""
    if matrix.device.type != "cpu" or matrix.dtype not in (torch.float32, torch.float64) or matrix.shape[1:] != (3, 3):
        return False
    from .ops import resolve_impl  # stn.ops imports this module

    return resolve_impl("auto", matrix.device) == "cpp"


def basis_points_reference(matrix: Tensor, basis: Tensor, eps: float | None) -> Tensor:
    """_BasisPoints through autograd's own ops (matmul, where, divide): its reference in the tests and
    the baseline of `python -m stn.bench grid`. matrix (N, R, F), basis (P, F) -> points (N, P, D)."""
    rows = torch.matmul(matrix, basis.t())
    if eps is not None:
        w = rows[:, -1:]
        rows = rows[:, :-1] / torch.where(w.abs() < eps, _signed_eps(w, eps), w)
    return rows.transpose(1, 2)


def _homogeneous(points: Tensor) -> Tensor:
    return torch.cat([points, torch.ones_like(points[:, :1])], dim=1)


class Affine(Transform):
    """Eq. (1): 6 parameters, θ = (θ11, θ12, θ13, θ21, θ22, θ23) row-major."""

    num_params = 6
    affine = True

    def _identity_params(self) -> Tensor:
        return torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64)

    def basis(self, points: Tensor) -> Tensor:
        return _homogeneous(points)

    def matrix(self, theta: Tensor) -> Tensor:
        return theta.view(-1, 2, 3)


class Attention(Transform):
    """Eq. (2): isotropic scale and translation, θ = (s, tx, ty); with `scale` given the scale is
    fixed and θ = (tx, ty) (the attention windows of appendix A.6, and our co-localisation)."""

    affine = True

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.num_params = 3 if scale is None else 2

    def _identity_params(self) -> Tensor:
        return torch.tensor([1.0, 0, 0] if self.scale is None else [0.0, 0], dtype=torch.float64)

    def scaling(self, scale: float, batch_size: int, device=None, dtype=None) -> Tensor:
        if scale != 1 and self.scale is not None:
            raise ValueError(f"an attention transform with a fixed scale ({self.scale}) cannot start at another")
        return super().scaling(scale, batch_size, device, dtype)

    def basis(self, points: Tensor) -> Tensor:
        return _homogeneous(points)

    def matrix(self, theta: Tensor) -> Tensor:
        if self.scale is None:
            s, tx, ty = theta.unbind(1)
        else:
            tx, ty = theta.unbind(1)
            s = torch.full_like(tx, self.scale)
        zero = torch.zeros_like(s)
        return torch.stack([s, zero, tx, zero, s, ty], dim=1).view(-1, 2, 3)


class Projective(Transform):
    """Plane homography with 8 parameters (h33 fixed to 1), θ = (h11, h12, h13, h21, h22, h23, h31, h32).

    The homogeneous divide uses w clamped away from zero (|w| ≥ eps, sign kept), so points on
    the horizon land far outside the map (zero after sampling) instead of producing inf/NaN.
    """

    num_params = 8

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.divide_eps = eps

    def _identity_params(self) -> Tensor:
        return torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float64)

    @staticmethod
    def fit(targets: Tensor, sources: Tensor) -> Tensor:
        """θ (N, 8) of the homography mapping 4 target points (N, 4, 2) onto 4 source points (N, 4, 2)."""
        x, y = targets.unbind(-1)
        u, v = sources.unbind(-1)
        zero, one = torch.zeros_like(x), torch.ones_like(x)
        rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
        rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
        a = torch.cat([rows_u, rows_v], dim=1)  # (N, 8, 8)
        b = torch.cat([u, v], dim=1).unsqueeze(-1)
        return torch.linalg.solve(a, b).squeeze(-1)

    def basis(self, points: Tensor) -> Tensor:
        return _homogeneous(points)

    def matrix(self, theta: Tensor) -> Tensor:
        one = torch.ones_like(theta[:, :1])
        return torch.cat([theta, one], dim=1).view(-1, 3, 3)


def _tps_kernel(r2: Tensor) -> Tensor:
    """U(r) = r² log r² with U(0) = 0; the `where` keeps log's argument positive so no NaN/inf appears."""
    positive = r2 > 0
    return torch.where(positive, r2 * torch.log(torch.where(positive, r2, torch.ones_like(r2))), torch.zeros_like(r2))


class ThinPlateSpline(Transform):
    """Thin-plate spline (Bookstein 1989) through K control points.

    θ holds the control points' target (source-space) positions as flattened (x, y) pairs; the
    spline interpolates them exactly and reproduces affine maps. The (K+3)² system depends only
    on the control points, so it is inverted once here and folded into the basis.
    """

    def __init__(self, grid_size: int | tuple[int, int] = 4, control_points: Tensor | None = None) -> None:
        super().__init__()
        if control_points is None:
            gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
            if gh < 2 or gw < 2:
                raise ValueError(f"ThinPlateSpline needs a control grid of at least 2x2, got {gh}x{gw}")
            ys, xs = torch.meshgrid(
                torch.linspace(-1, 1, gh, dtype=torch.float64), torch.linspace(-1, 1, gw, dtype=torch.float64), indexing="ij"
            )
            control_points = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
        control_points = control_points.to(torch.float64)
        if control_points.dim() != 2 or control_points.shape[1] != 2 or control_points.shape[0] < 3:
            raise ValueError(f"control_points must have shape (K >= 3, 2), got {tuple(control_points.shape)}")
        k = control_points.shape[0]
        self.num_params = 2 * k
        system = torch.zeros(k + 3, k + 3, dtype=torch.float64)
        system[:k, :k] = _tps_kernel(torch.cdist(control_points, control_points).pow(2))
        system[:k, k:] = _homogeneous_first(control_points)
        system[k:, :k] = _homogeneous_first(control_points).T
        self.register_buffer("control_points", control_points)
        self.register_buffer("_solve", torch.linalg.inv(system)[:, :k].contiguous())  # (K+3, K)

    def _identity_params(self) -> Tensor:
        return self.control_points.reshape(-1).cpu()

    def basis(self, points: Tensor) -> Tensor:
        points = points.to(torch.float64)
        diff = points[:, None, :] - self.control_points.to(points.device)[None, :, :]
        phi = torch.cat([_tps_kernel(diff.pow(2).sum(-1)), _homogeneous_first(points)], dim=1)  # (P, K+3)
        return phi @ self._solve.to(points.device)

    def matrix(self, theta: Tensor) -> Tensor:
        return theta.view(theta.shape[0], -1, 2).transpose(1, 2)


def _homogeneous_first(points: Tensor) -> Tensor:
    return torch.cat([torch.ones_like(points[:, :1]), points], dim=1)


class Affine3D(Transform):
    """Eq. (10): 3-D affine, 12 parameters (a 3×4 matrix, row-major) acting on (x, y, z, 1)."""

    ndim = 3
    num_params = 12
    affine = True

    def _identity_params(self) -> Tensor:
        return torch.tensor([1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0], dtype=torch.float64)

    def basis(self, points: Tensor) -> Tensor:
        return _homogeneous(points)

    def matrix(self, theta: Tensor) -> Tensor:
        return theta.view(-1, 3, 4)


class LearnableBasis(Transform):
    """T_θ = M_θ · B with B a learnt parameter (Sect. 3.2), initialised to `base`'s basis on a fixed grid.

    Because B is a free tensor over the output pixels, this transform is defined only on the
    output size it was built for.
    """

    def __init__(self, base: Transform, out_size: Sequence[int], align_corners: bool = False) -> None:
        super().__init__()
        self.base = base
        self.ndim, self.divide_eps = base.ndim, base.divide_eps
        self.num_params = base.num_params
        self.out_size = tuple(int(s) for s in out_size)
        self.align_corners = align_corners
        with torch.no_grad():
            b = base.basis(regular_grid(self.out_size, align_corners, dtype=torch.float64))
        self.learned_basis = nn.Parameter(b.to(torch.get_default_dtype()))  # (P, F)

    def _identity_params(self) -> Tensor:
        return self.base._identity_params()

    def matrix(self, theta: Tensor) -> Tensor:
        return self.base.matrix(theta)

    def transform_points(self, theta: Tensor, points: Tensor) -> Tensor:
        raise TypeError("LearnableBasis is defined only on its own output grid; call grid(theta, out_size)")

    def grid(self, theta: Tensor, out_size: Sequence[int], align_corners: bool = False) -> Tensor:
        self.check_theta(theta)
        if tuple(out_size) != self.out_size or align_corners != self.align_corners:
            raise ValueError(
                f"this LearnableBasis was built for out_size={self.out_size}, align_corners={self.align_corners}; "
                f"got out_size={tuple(out_size)}, align_corners={align_corners}"
            )
        points = self._apply_basis(theta, self.learned_basis.to(theta.dtype))
        return points.reshape(theta.shape[0], *self.out_size, self.ndim)


TRANSFORMS = {
    "affine": Affine,
    "attention": Attention,
    "projective": Projective,
    "tps": ThinPlateSpline,
    "affine3d": Affine3D,
}


def make_transform(name: str, **kwargs) -> Transform:
    """Build a transform from its config name (affine, attention, projective, tps, affine3d)."""
    try:
        cls = TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; choose one of {sorted(TRANSFORMS)}") from None
    return cls(**kwargs)


def rotation_matrix_3d(angles: Tensor) -> Tensor:
    """Rotation matrices (N, 3, 3) from Euler angles (N, 3) about x, then y, then z (radians)."""
    ax, ay, az = angles.unbind(-1)
    c, s = torch.cos, torch.sin
    one, zero = torch.ones_like(ax), torch.zeros_like(ax)
    rx = torch.stack([one, zero, zero, zero, c(ax), -s(ax), zero, s(ax), c(ax)], -1).view(-1, 3, 3)
    ry = torch.stack([c(ay), zero, s(ay), zero, one, zero, -s(ay), zero, c(ay)], -1).view(-1, 3, 3)
    rz = torch.stack([c(az), -s(az), zero, s(az), c(az), zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx
