"""Fake (meta) and autograd registrations for the compiled ops, so torch.compile can trace them."""
from __future__ import annotations

import torch

_done = False


def register() -> None:
    global _done
    if _done:
        return
    _done = True

    @torch.library.register_fake("stn::sample_forward")
    def _sample_forward_fake(input, grid, mode, align_corners):
        return input.new_empty((input.shape[0], input.shape[1], *grid.shape[1:-1]))

    @torch.library.register_fake("stn::sample_backward")
    def _sample_backward_fake(grad_output, input, grid, mode, align_corners, input_grad, grid_grad):
        gi = torch.empty_like(input, memory_format=torch.contiguous_format) if input_grad else input.new_empty(0)
        gg = torch.empty_like(grid, memory_format=torch.contiguous_format) if grid_grad else grid.new_empty(0)
        return gi, gg

    def setup_context(ctx, inputs, output):
        input, grid, mode, align_corners = inputs
        ctx.save_for_backward(input, grid)
        ctx.mode, ctx.align_corners = mode, align_corners

    def backward(ctx, grad_output):
        input, grid = ctx.saved_tensors
        need_input, need_grid = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gi, gg = torch.ops.stn.sample_backward(
            grad_output, input, grid, ctx.mode, ctx.align_corners, need_input, need_grid
        )
        return (gi if need_input else None), (gg if need_grid else None), None, None

    torch.library.register_autograd("stn::sample_forward", backward, setup_context=setup_context)
