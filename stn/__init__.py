"""Spatial Transformer Networks (Jaderberg et al., 2015): library and reproducibility pipeline.

The public names below load on first use, so that `stn`'s light modules (the command-line client, the
warm-start client stn.warm, the config checks) start without importing torch.
"""
import importlib

_PUBLIC = {
    "ops": None,
    "transforms": None,
    "sample": "ops",
    "Affine": "transforms",
    "Affine3D": "transforms",
    "Attention": "transforms",
    "LearnableBasis": "transforms",
    "Projective": "transforms",
    "ThinPlateSpline": "transforms",
    "make_transform": "transforms",
    "AvgPool": "modules",
    "SpatialTransformer": "modules",
    "avg_pool": "modules",
    "param_groups": "modules",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'stn' has no attribute {name!r}")
    home = _PUBLIC[name]
    module = importlib.import_module(f"{__name__}.{home or name}")
    value = module if home is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
