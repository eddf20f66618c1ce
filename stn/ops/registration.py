"""Fake (meta) and autograd registrations for the compiled ops, so torch.compile can trace them.

Every compiled op comes as a pair: stn::<name>_forward(a, b, *args) and
stn::<name>_backward(grad, a, b, *args, need_a, need_b) -> (da, db), where a gradient that
was not asked for comes back as an empty tensor.
"""
from __future__ import annotations

import torch

_done = False


def _register_pair(name: str, forward_fake) -> None:
    torch.library.register_fake(f"stn::{name}_forward")(forward_fake)

    @torch.library.register_fake(f"stn::{name}_backward")
    def _backward_fake(grad_output, a, b, *rest):
        need_a, need_b = rest[-2:]
        da = torch.empty_like(a, memory_format=torch.contiguous_format) if need_a else a.new_empty(0)
        db = torch.empty_like(b, memory_format=torch.contiguous_format) if need_b else b.new_empty(0)
        return da, db

    backward_op = getattr(torch.ops.stn, f"{name}_backward")

    def setup_context(ctx, inputs, output):
        a, b, *args = inputs
        ctx.save_for_backward(a, b)
        ctx.args = args

    def backward(ctx, grad_output):
        a, b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        da, db = backward_op(grad_output, a, b, *ctx.args, need_a, need_b)
        return (da if need_a else None), (db if need_b else None), *([None] * len(ctx.args))

    torch.library.register_autograd(f"stn::{name}_forward", backward, setup_context=setup_context)


def register() -> None:
    global _done
    if _done:
        return
    _done = True
    _register_pair(
        "sample",
        lambda input, grid, mode, align_corners: input.new_empty((input.shape[0], input.shape[1], *grid.shape[1:-1])),
    )
    _register_pair(
        "affine_sample",
        lambda input, theta, out_size, align_corners: input.new_empty((input.shape[0], input.shape[1], *out_size)),
    )
