import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def impls():
    """Sampler implementations usable on the CPU here (the compiled one must be built for CI)."""
    from stn import ops

    return [i for i, why in ops.available_impls("cpu").items() if why is None]
