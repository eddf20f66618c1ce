"""A few training steps of a 2-D ST-CNN-Aff, a 2xST-FCN-TPS and the 3-D ST3D on random data, so a
machine with a GPU can check that training, evaluation and checkpoints run on it end to end
(the pipeline's smoke config needs MNIST; this needs nothing). Usage: python scripts/train_smoke.py [auto|cpu|cuda]
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stn.data import volumes
from stn.experiments import volumetric
from stn.models.mnist import InputSpec, build
from stn.train import TrainSettings, train_run

device = sys.argv[1] if len(sys.argv) > 1 else "auto"
rng = np.random.default_rng(0)


def settings(iterations: int, batch_size: int, channels_last: bool = True) -> TrainSettings:
    return TrainSettings(iterations=iterations, batch_size=batch_size, lr=0.01, momentum=0.9, lr_step=1000, lr_gamma=0.1, weight_decay=0.0, loc_lr_mult=1.0,
                         eval_every=iterations // 2, eval_samples=200, checkpoint_every=iterations // 2,
                         channels_last=channels_last, device=device)


def images(size: int, channels: int, classes: int) -> dict:
    shape = (size, size) if channels == 1 else (channels, size, size)
    return {f"{k}_{split}": v for split, n in (("train", 2000), ("val", 300), ("test", 300))
            for k, v in (("x", rng.integers(0, 255, (n, *shape), dtype=np.uint8)), ("y", rng.integers(0, classes, n)))}


def report(name: str, metrics: dict, start: float) -> None:
    print(f"{name}: device {metrics['device']}, sampler {metrics['sampler_impl']}, "
          f"test error {metrics['test_error']:.1f}% (chance ~90), {time.time() - start:.1f} s", flush=True)


out = Path(tempfile.mkdtemp())
for name, inp, params in [("ST-CNN-Aff", InputSpec(1, 42, 10, True), 120_000),
                          ("2xST-FCN-TPS", InputSpec(2, 42, 19, False), 400_000)]:
    start = time.time()
    report(name, train_run(build(name, inp, params).model, images(42, inp.channels, inp.classes), settings(40, 64), 1,
                           out / name, log=lambda s: None), start)
mnist = {"train_images": rng.integers(0, 255, (10_600, 28, 28), dtype=np.uint8), "train_labels": rng.integers(0, 10, 10_600),
         "test_images": rng.integers(0, 255, (300, 28, 28), dtype=np.uint8), "test_labels": rng.integers(0, 10, 300)}
start = time.time()
model, _ = volumetric.build("ST3D", 32, 1)
report("ST3D", train_run(model, volumes.load_sets(mnist, volumes.generate(mnist, 1, None)), settings(20, 16, False), 1,
                         out / "st3d", log=lambda s: None), start)
