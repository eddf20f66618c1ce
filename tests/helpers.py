"""Shared test fixtures that are plain functions."""
import numpy as np


def fake_mnist(n_train=10_064, n_test=64, seed=0):
    """MNIST-shaped arrays: a bright 10×10 square per digit, at a known place."""
    rng = np.random.default_rng(seed)

    def digits(n):
        x = np.zeros((n, 28, 28), np.uint8)
        x[:, 9:19, 9:19] = rng.integers(128, 256, size=(n, 10, 10), dtype=np.uint8)
        return x

    return {
        "train_images": digits(n_train),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": digits(n_test),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
