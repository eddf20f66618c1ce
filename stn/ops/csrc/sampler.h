// Op-level helpers shared by the CPU and CUDA implementations of stn::sample_forward/backward.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/types.h>

#include <tuple>
#include <utility>
#include <vector>

#include "sampler_math.h"

namespace stn {

// Validates (input, grid) and returns the number of spatial dimensions (2 or 3).
inline int check_sample_args(const at::Tensor& input, const at::Tensor& grid, int64_t mode) {
  TORCH_CHECK(input.dim() == 4 || input.dim() == 5, "stn.sample: input must be 4-D (N,C,H,W) or 5-D (N,C,D,H,W), got ",
              input.dim(), "-D");
  const int d = static_cast<int>(input.dim()) - 2;
  TORCH_CHECK(grid.dim() == d + 2 && grid.size(-1) == d, "stn.sample: a ", input.dim(), "-D input needs a grid of shape (N, ",
              d == 2 ? "H', W', 2" : "D', H', W', 3", "), got ", grid.sizes());
  TORCH_CHECK(grid.size(0) == input.size(0), "stn.sample: input and grid batch sizes differ (", input.size(0), " vs ",
              grid.size(0), ")");
  TORCH_CHECK(input.scalar_type() == grid.scalar_type(), "stn.sample: input and grid dtypes differ (", input.scalar_type(),
              " vs ", grid.scalar_type(), ")");
  TORCH_CHECK(input.device() == grid.device(), "stn.sample: input and grid are on different devices");
  TORCH_CHECK(mode == kBilinear || mode == kNearest, "stn.sample: mode must be 0 (bilinear) or 1 (nearest), got ", mode);
  return d;
}

// Output shape (N, C, *grid spatial).
inline std::vector<int64_t> sample_output_shape(const at::Tensor& input, const at::Tensor& grid) {
  std::vector<int64_t> shape{input.size(0), input.size(1)};
  for (int64_t i = 1; i < grid.dim() - 1; ++i) shape.push_back(grid.size(i));
  return shape;
}

// Number of sample points per batch element.
inline int64_t points_per_sample(const at::Tensor& grid) {
  int64_t p = 1;
  for (int64_t i = 1; i < grid.dim() - 1; ++i) p *= grid.size(i);
  return p;
}

inline int64_t spatial_numel(const at::Tensor& input) {
  int64_t s = 1;
  for (int64_t i = 2; i < input.dim(); ++i) s *= input.size(i);
  return s;
}

// Calls Kernel<D, MODE, scalar_t>::run(args...) for the input's dimensionality, mode and dtype.
template <template <int, int, typename> class Kernel, typename... Args>
void dispatch_sampler(const at::Tensor& input, int64_t mode, Args&&... args) {
  const int d = static_cast<int>(input.dim()) - 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "stn_sample", [&] {
    if (d == 2 && mode == kBilinear) Kernel<2, kBilinear, scalar_t>::run(std::forward<Args>(args)...);
    if (d == 2 && mode == kNearest) Kernel<2, kNearest, scalar_t>::run(std::forward<Args>(args)...);
    if (d == 3 && mode == kBilinear) Kernel<3, kBilinear, scalar_t>::run(std::forward<Args>(args)...);
    if (d == 3 && mode == kNearest) Kernel<3, kNearest, scalar_t>::run(std::forward<Args>(args)...);
  });
}

// The device-independent part of stn::sample_forward; Forward<D, MODE, scalar_t>::run fills `out`.
template <template <int, int, typename> class Forward>
at::Tensor sample_forward_impl(const at::Tensor& input_, const at::Tensor& grid_, int64_t mode, bool align_corners) {
  check_sample_args(input_, grid_, mode);
  const at::Tensor input = input_.contiguous(), grid = grid_.contiguous();
  at::Tensor out = at::empty(sample_output_shape(input, grid), input.options());
  if (out.numel() > 0) dispatch_sampler<Forward>(input, mode, input, grid, out, align_corners);
  return out;
}

// The device-independent part of stn::sample_backward. d input is accumulated in the op-math type
// (float for half/bfloat16). A gradient that was not asked for comes back as an empty tensor
// (ops cannot return None).
template <template <int, int, typename> class Backward>
std::tuple<at::Tensor, at::Tensor> sample_backward_impl(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                        const at::Tensor& grid_, int64_t mode, bool align_corners,
                                                        bool input_grad, bool grid_grad) {
  check_sample_args(input_, grid_, mode);
  const at::Tensor input = input_.contiguous(), grid = grid_.contiguous(), grad_out = grad_out_.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(sample_output_shape(input, grid)),
              "stn.sample backward: grad_output has the wrong shape ", grad_out.sizes());
  const auto acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor gi_acc = input_grad ? at::zeros(input.sizes(), input.options().dtype(acc_type)) : at::Tensor();
  at::Tensor gg = grid_grad ? at::zeros(grid.sizes(), grid.options()) : at::empty({0}, grid.options());
  if (grad_out.numel() > 0 && (input_grad || grid_grad)) {
    dispatch_sampler<Backward>(input, mode, grad_out, input, grid, input_grad ? &gi_acc : nullptr,
                               grid_grad ? &gg : nullptr, align_corners);
  }
  at::Tensor gi = input_grad ? gi_acc.to(input.scalar_type()) : at::empty({0}, input.options());
  return {gi, gg};
}

}  // namespace stn
