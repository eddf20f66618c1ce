// CUDA sampler: forward and backward of stn::sample_* for float, double, half and bfloat16,
// accumulating in the op-math type (float for half/bfloat16). One thread per output point;
// the backward scatters d input with atomics into an op-math buffer.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../sampler.h"

namespace stn {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t(1) << 20));
}

template <int D, int MODE, typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ gr, scalar_t* __restrict__ out,
                               Geometry<D> g, int64_t N, int64_t C, int64_t S, int64_t P, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = N * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t n = i / P, p = i - n * P;
    acc_t pt[D];
#pragma unroll
    for (int a = 0; a < D; ++a) pt[a] = unnormalize(acc_t(gr[i * D + a]), g.size[a], align_corners);
    const scalar_t* src = in + n * C * S;
    scalar_t* dst = out + n * C * P + p;
    if (MODE == kBilinear) {
      LinearTaps<D, acc_t> t;
      if (!t.init(pt, g)) {
        for (int64_t c = 0; c < C; ++c) dst[c * P] = scalar_t(0);
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* s = src + c * S;
        acc_t v = acc_t(0);
#pragma unroll
        for (int k = 0; k < LinearTaps<D, acc_t>::K; ++k) v += t.weight[k] * acc_t(s[t.offset[k]]);
        dst[c * P] = scalar_t(v);
      }
    } else {
      int64_t off = 0;
      const bool present = nearest_offset<D>(pt, g, &off);
      for (int64_t c = 0; c < C; ++c) dst[c * P] = present ? src[c * S + off] : scalar_t(0);
    }
  }
}

template <int D, int MODE, typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ in,
                                const scalar_t* __restrict__ gr, at::opmath_type<scalar_t>* __restrict__ gi,
                                scalar_t* __restrict__ gg, Geometry<D> g, int64_t N, int64_t C, int64_t S, int64_t P,
                                bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = LinearTaps<D, acc_t>::K;
  const int64_t total = N * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t n = i / P, p = i - n * P;
    acc_t pt[D];
#pragma unroll
    for (int a = 0; a < D; ++a) pt[a] = unnormalize(acc_t(gr[i * D + a]), g.size[a], align_corners);
    const scalar_t* src = in + n * C * S;
    const scalar_t* gout = go + n * C * P + p;
    acc_t* gin = gi ? gi + n * C * S : nullptr;
    if (MODE == kNearest) {
      int64_t off = 0;
      if (gin && nearest_offset<D>(pt, g, &off)) {
        for (int64_t c = 0; c < C; ++c) atomicAdd(gin + c * S + off, acc_t(gout[c * P]));
      }
      continue;  // zero grid gradient: grad_grid is zero-filled
    }
    LinearTaps<D, acc_t> t;
    if (!t.init(pt, g)) {
      if (gg)
#pragma unroll
        for (int a = 0; a < D; ++a) gg[i * D + a] = scalar_t(0);
      continue;
    }
    acc_t acc[D];
#pragma unroll
    for (int a = 0; a < D; ++a) acc[a] = acc_t(0);
    for (int64_t c = 0; c < C; ++c) {
      const acc_t gv = acc_t(gout[c * P]);
      if (gin) {
#pragma unroll
        for (int k = 0; k < K; ++k)
          if (t.mask[k] != acc_t(0)) atomicAdd(gin + c * S + t.offset[k], t.weight[k] * gv);
      }
      if (gg) {
        const scalar_t* s = src + c * S;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const acc_t v = acc_t(s[t.offset[k]]) * gv;
#pragma unroll
          for (int a = 0; a < D; ++a) acc[a] += v * t.dweight(k, a);
        }
      }
    }
    if (gg) {
#pragma unroll
      for (int a = 0; a < D; ++a) gg[i * D + a] = scalar_t(acc[a] * unnormalize_scale<acc_t>(g.size[a], align_corners));
    }
  }
}

template <int D, int MODE, typename scalar_t>
struct Forward {
  static void run(const at::Tensor& input, const at::Tensor& grid, at::Tensor& out, bool align_corners) {
    const c10::cuda::CUDAGuard guard(input.device());
    const int64_t N = input.size(0), P = points_per_sample(grid);
    forward_kernel<D, MODE, scalar_t><<<blocks_for(N * P), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        geometry_from_sizes<D>(input.sizes().data() + 2), N, input.size(1), spatial_numel(input), P, align_corners);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <int D, int MODE, typename scalar_t>
struct Backward {
  static void run(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grid, at::Tensor* gi,
                  at::Tensor* gg, bool align_corners) {
    using acc_t = at::opmath_type<scalar_t>;
    const c10::cuda::CUDAGuard guard(input.device());
    const int64_t N = input.size(0), P = points_per_sample(grid);
    backward_kernel<D, MODE, scalar_t><<<blocks_for(N * P), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), grid.const_data_ptr<scalar_t>(),
        gi ? gi->mutable_data_ptr<acc_t>() : nullptr, gg ? gg->mutable_data_ptr<scalar_t>() : nullptr,
        geometry_from_sizes<D>(input.sizes().data() + 2), N, input.size(1), spatial_numel(input), P, align_corners);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor sample_forward_cuda(const at::Tensor& input, const at::Tensor& grid, int64_t mode, bool align_corners) {
  return sample_forward_impl<Forward>(input, grid, mode, align_corners);
}

std::tuple<at::Tensor, at::Tensor> sample_backward_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                                        const at::Tensor& grid, int64_t mode, bool align_corners,
                                                        bool input_grad, bool grid_grad) {
  return sample_backward_impl<Backward>(grad_out, input, grid, mode, align_corners, input_grad, grid_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(stn, CUDA, m) {
  m.impl("sample_forward", &sample_forward_cuda);
  m.impl("sample_backward", &sample_backward_cuda);
}

}  // namespace stn
