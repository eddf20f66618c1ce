"""Spatial Transformer Networks (Jaderberg et al., 2015): library and reproducibility pipeline."""
from . import ops, transforms
from .ops import sample
from .transforms import Affine, Affine3D, Attention, LearnableBasis, Projective, ThinPlateSpline, make_transform

__all__ = [
    "ops",
    "transforms",
    "sample",
    "Affine",
    "Affine3D",
    "Attention",
    "LearnableBasis",
    "Projective",
    "ThinPlateSpline",
    "make_transform",
]

from .modules import AvgPool, SpatialTransformer, avg_pool, param_groups  # noqa: E402

__all__ += ["AvgPool", "SpatialTransformer", "avg_pool", "param_groups"]
