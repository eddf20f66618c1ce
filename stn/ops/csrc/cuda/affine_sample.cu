// Fused affine transformer on CUDA: stn::affine_sample_forward/backward.
//
// One thread per output point computes its sampling point from θ (no grid tensor is read or
// written). The backward reduces each thread's grid gradient into the D·(D+1) sums that dθ
// needs, warp by warp and then per block, and writes one partial sum per block, which a final
// sum over blocks turns into dθ: deterministic, with no grid-sized buffer. d input is
// scattered with atomics into an op-math buffer, as in the unfused sampler.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../affine_sample.h"

namespace stn {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned int kMaxGridY = 65535;

template <int D>
struct Launch {
  dim3 blocks;
  int64_t points;
  Launch(int64_t n, const int64_t* out) {
    points = 1;
    for (int a = 0; a < D; ++a) points *= out[a];
    const int64_t bx = (points + kThreads - 1) / kThreads;
    blocks = dim3(static_cast<unsigned int>(bx), static_cast<unsigned int>(std::min<int64_t>(n, kMaxGridY)));
  }
};

// Sampling point of output point p (x fastest) of sample `th` (D x (D+1)), in pixel units, and
// its normalised target coordinates t.
template <int D, typename acc_t>
__device__ __forceinline__ void point_of(int64_t p, const acc_t* th, const AffineAxes<D, acc_t>& ax, acc_t* t,
                                         acc_t* px) {
  int64_t rest = p;
#pragma unroll
  for (int a = 0; a < D; ++a) {
    const int64_t i = rest % ax.out[a];
    rest /= ax.out[a];
    t[a] = acc_t(target_coord(i, ax.out[a], ax.align_corners));
  }
#pragma unroll
  for (int a = 0; a < D; ++a) {
    acc_t c = th[a * (D + 1) + D];
#pragma unroll
    for (int b = 0; b < D; ++b) c += th[a * (D + 1) + b] * t[b];
    px[a] = c * ax.scale[a] + ax.shift[a];
  }
}

template <int D, typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ in, const at::opmath_type<scalar_t>* __restrict__ theta,
                               scalar_t* __restrict__ out, AffineAxes<D, at::opmath_type<scalar_t>> ax, Geometry<D> g,
                               int64_t N, int64_t C, int64_t S, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (p >= P) return;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    acc_t t[D], px[D];
    point_of<D, acc_t>(p, theta + n * D * (D + 1), ax, t, px);
    LinearTaps<D, acc_t> taps;
    taps.init(px, g);  // an absent point has zero weights
    const scalar_t* src = in + n * C * S;
    scalar_t* dst = out + n * C * P + p;
    for (int64_t c = 0; c < C; ++c) {
      acc_t v = acc_t(0);
#pragma unroll
      for (int k = 0; k < LinearTaps<D, acc_t>::K; ++k) v += taps.weight[k] * acc_t(src[c * S + taps.offset[k]]);
      dst[c * P] = scalar_t(v);
    }
  }
}

template <int D, typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ in,
                                const at::opmath_type<scalar_t>* __restrict__ theta,
                                at::opmath_type<scalar_t>* __restrict__ gi, at::opmath_type<scalar_t>* __restrict__ partial,
                                AffineAxes<D, at::opmath_type<scalar_t>> ax, Geometry<D> g, int64_t N, int64_t C, int64_t S,
                                int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = LinearTaps<D, acc_t>::K;
  constexpr int M = D * (D + 1);
  __shared__ acc_t warp_sums[kWarps][M];
  const int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    acc_t sums[M];
#pragma unroll
    for (int m = 0; m < M; ++m) sums[m] = acc_t(0);
    if (p < P) {  // no early return: every thread takes part in the reduction below
      acc_t t[D], px[D];
      point_of<D, acc_t>(p, theta + n * D * (D + 1), ax, t, px);
      LinearTaps<D, acc_t> taps;
      if (taps.init(px, g)) {
        acc_t dp[D];
#pragma unroll
        for (int a = 0; a < D; ++a) dp[a] = acc_t(0);
        const scalar_t* src = in + n * C * S;
        const scalar_t* gout = go + n * C * P + p;
        acc_t* gin = gi ? gi + n * C * S : nullptr;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t gv = acc_t(gout[c * P]);
          if (gin) {
#pragma unroll
            for (int k = 0; k < K; ++k)
              if (taps.mask[k] != acc_t(0)) atomicAdd(gin + c * S + taps.offset[k], taps.weight[k] * gv);
          }
          if (partial) {
#pragma unroll
            for (int k = 0; k < K; ++k) {
              const acc_t v = acc_t(src[c * S + taps.offset[k]]) * gv;
#pragma unroll
              for (int a = 0; a < D; ++a) dp[a] += v * taps.dweight(k, a);
            }
          }
        }
        // p_a = scale_a * (Σ_b θ_ab t_b + θ_aD) + shift_a
#pragma unroll
        for (int a = 0; a < D; ++a) {
          const acc_t d = dp[a] * ax.scale[a];
#pragma unroll
          for (int b = 0; b < D; ++b) sums[a * (D + 1) + b] = d * t[b];
          sums[a * (D + 1) + D] = d;
        }
      }
    }
    if (partial) {
#pragma unroll
      for (int m = 0; m < M; ++m) {
        acc_t v = sums[m];
        for (int shift = 16; shift > 0; shift /= 2) v += __shfl_down_sync(0xffffffffu, v, shift);
        if (lane == 0) warp_sums[warp][m] = v;
      }
      __syncthreads();
      if (threadIdx.x < M) {
        acc_t v = acc_t(0);
        for (int w = 0; w < kWarps; ++w) v += warp_sums[w][threadIdx.x];
        partial[(n * gridDim.x + blockIdx.x) * M + threadIdx.x] = v;
      }
      __syncthreads();
    }
  }
}

template <int D, typename scalar_t>
struct Forward {
  static void run(const at::Tensor& input, const at::Tensor& theta, at::Tensor& out, at::IntArrayRef out_size,
                  bool align_corners) {
    using acc_t = at::opmath_type<scalar_t>;
    const c10::cuda::CUDAGuard guard(input.device());
    const AffineAxes<D, acc_t> ax(input, out_size, align_corners);
    const Launch<D> launch(input.size(0), ax.out);
    const at::Tensor th = theta.to(at::toOpMathType(theta.scalar_type())).contiguous();
    forward_kernel<D, scalar_t><<<launch.blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), th.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), ax,
        geometry_from_sizes<D>(input.sizes().data() + 2), input.size(0), input.size(1), spatial_numel(input),
        launch.points);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <int D, typename scalar_t>
struct Backward {
  static constexpr bool kWritesAllInputGrad = false;  // atomics accumulate into zeros
  static void run(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& theta, at::Tensor* gi,
                  at::Tensor* gt, at::IntArrayRef out_size, bool align_corners) {
    using acc_t = at::opmath_type<scalar_t>;
    const c10::cuda::CUDAGuard guard(input.device());
    const AffineAxes<D, acc_t> ax(input, out_size, align_corners);
    const Launch<D> launch(input.size(0), ax.out);
    const at::Tensor th = theta.to(at::toOpMathType(theta.scalar_type())).contiguous();
    const int64_t N = input.size(0);
    at::Tensor partial;
    if (gt) partial = at::empty({N, static_cast<int64_t>(launch.blocks.x), D * (D + 1)}, th.options());
    backward_kernel<D, scalar_t><<<launch.blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), th.const_data_ptr<acc_t>(),
        gi ? gi->mutable_data_ptr<acc_t>() : nullptr, gt ? partial.mutable_data_ptr<acc_t>() : nullptr, ax,
        geometry_from_sizes<D>(input.sizes().data() + 2), N, input.size(1), spatial_numel(input), launch.points);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (gt) gt->copy_(partial.sum(1).view(gt->sizes()));
  }
};

at::Tensor affine_sample_forward_cuda(const at::Tensor& input, const at::Tensor& theta, at::IntArrayRef out_size,
                                      bool align_corners) {
  return affine_sample_forward_impl<Forward>(input, theta, out_size, align_corners);
}

std::tuple<at::Tensor, at::Tensor> affine_sample_backward_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                                               const at::Tensor& theta, at::IntArrayRef out_size,
                                                               bool align_corners, bool input_grad, bool theta_grad) {
  return affine_sample_backward_impl<Backward>(grad_out, input, theta, out_size, align_corners, input_grad, theta_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(stn, CUDA, m) {
  m.impl("affine_sample_forward", &affine_sample_forward_cuda);
  m.impl("affine_sample_backward", &affine_sample_backward_cuda);
}

}  // namespace stn
