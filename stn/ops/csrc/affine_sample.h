// Op-level helpers shared by the CPU and CUDA implementations of stn::affine_sample_*: bilinear
// (trilinear) sampling at the points of an affine transform of the regular grid, computed from θ
// on the fly, so the (N, *out_size, D) grid tensor never exists in the forward or the backward.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/types.h>

#include <tuple>
#include <vector>

#include "sampler.h"

namespace stn {

// Validates (input, theta, out_size) and returns the number of spatial dimensions (2 or 3).
inline int check_affine_sample_args(const at::Tensor& input, const at::Tensor& theta, at::IntArrayRef out_size) {
  TORCH_CHECK(input.dim() == 4 || input.dim() == 5,
              "stn.affine_sample: input must be 4-D (N,C,H,W) or 5-D (N,C,D,H,W), got ", input.dim(), "-D");
  const int d = static_cast<int>(input.dim()) - 2;
  TORCH_CHECK(theta.dim() == 3 && theta.size(0) == input.size(0) && theta.size(1) == d && theta.size(2) == d + 1,
              "stn.affine_sample: a ", input.dim(), "-D input of batch ", input.size(0), " needs theta of shape (",
              input.size(0), ", ", d, ", ", d + 1, "), got ", theta.sizes());
  TORCH_CHECK(static_cast<int>(out_size.size()) == d, "stn.affine_sample: out_size needs ", d, " entries, got ",
              out_size);
  for (const int64_t s : out_size) TORCH_CHECK(s > 0, "stn.affine_sample: out_size must be positive, got ", out_size);
  TORCH_CHECK(input.scalar_type() == theta.scalar_type(), "stn.affine_sample: input and theta dtypes differ (",
              input.scalar_type(), " vs ", theta.scalar_type(), ")");
  TORCH_CHECK(input.device() == theta.device(), "stn.affine_sample: input and theta are on different devices");
  return d;
}

inline std::vector<int64_t> affine_output_shape(const at::Tensor& input, at::IntArrayRef out_size) {
  std::vector<int64_t> shape{input.size(0), input.size(1)};
  shape.insert(shape.end(), out_size.begin(), out_size.end());
  return shape;
}

// Per-axis constants of one map in grid order (x, y, z): pixel = normalised * scale + shift.
template <int D, typename acc_t>
struct AffineAxes {
  int64_t in[D];   // input sizes
  int64_t out[D];  // output sizes
  acc_t scale[D];
  acc_t shift[D];
  bool align_corners;

  AffineAxes(const at::Tensor& input, at::IntArrayRef out_size, bool align) : align_corners(align) {
    for (int a = 0; a < D; ++a) {
      in[a] = input.size(input.dim() - 1 - a);
      out[a] = out_size[D - 1 - a];
      scale[a] = unnormalize_scale<acc_t>(in[a], align);
      shift[a] = acc_t(in[a] - 1) / acc_t(2);
    }
  }
};

// Calls Kernel<D, scalar_t>::run(args...) for the input's dimensionality and dtype.
template <template <int, typename> class Kernel, typename... Args>
void dispatch_affine(const at::Tensor& input, Args&&... args) {
  const int d = static_cast<int>(input.dim()) - 2;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "stn_affine_sample", [&] {
    if (d == 2) Kernel<2, scalar_t>::run(std::forward<Args>(args)...);
    if (d == 3) Kernel<3, scalar_t>::run(std::forward<Args>(args)...);
  });
}

template <template <int, typename> class Forward>
at::Tensor affine_sample_forward_impl(const at::Tensor& input_, const at::Tensor& theta_, at::IntArrayRef out_size,
                                      bool align_corners) {
  check_affine_sample_args(input_, theta_, out_size);
  const at::Tensor input = input_.contiguous(), theta = theta_.contiguous();
  at::Tensor out = at::empty(affine_output_shape(input, out_size), input.options());
  if (input.numel() == 0) return out.zero_();  // an empty map reads as zero padding everywhere
  if (out.numel() > 0) dispatch_affine<Forward>(input, input, theta, out, out_size, align_corners);
  return out;
}

// d input and d theta; one not asked for comes back empty (ops cannot return None). d input is
// accumulated in the op-math type (float for half/bfloat16) and d theta in double or float.
template <template <int, typename> class Backward>
std::tuple<at::Tensor, at::Tensor> affine_sample_backward_impl(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                               const at::Tensor& theta_, at::IntArrayRef out_size,
                                                               bool align_corners, bool input_grad, bool theta_grad) {
  check_affine_sample_args(input_, theta_, out_size);
  const at::Tensor input = input_.contiguous(), theta = theta_.contiguous(), grad_out = grad_out_.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(affine_output_shape(input, out_size)),
              "stn.affine_sample backward: grad_output has the wrong shape ", grad_out.sizes());
  const auto acc_type = at::toOpMathType(input.scalar_type());
  // Backward::run writes every element of the gradients it is given: no zero fill, a full pass over memory.
  at::Tensor gi_acc = input_grad ? at::empty(input.sizes(), input.options().dtype(acc_type)) : at::Tensor();
  at::Tensor gt_acc = theta_grad ? at::empty(theta.sizes(), theta.options().dtype(acc_type)) : at::Tensor();
  if (grad_out.numel() > 0 && input.numel() > 0 && (input_grad || theta_grad)) {
    dispatch_affine<Backward>(input, grad_out, input, theta, input_grad ? &gi_acc : nullptr,
                              theta_grad ? &gt_acc : nullptr, out_size, align_corners);
  } else {  // nothing is sampled, so nothing receives a gradient
    if (input_grad) gi_acc.zero_();
    if (theta_grad) gt_acc.zero_();
  }
  at::Tensor gi = input_grad ? gi_acc.to(input.scalar_type()) : at::empty({0}, input.options());
  at::Tensor gt = theta_grad ? gt_acc.to(theta.scalar_type()) : at::empty({0}, theta.options());
  return {gi, gt};
}

}  // namespace stn
