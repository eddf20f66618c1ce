"""Data: MNIST acquisition and the paper's distorted MNIST variants."""
