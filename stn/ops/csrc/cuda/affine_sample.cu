// Fused affine transformer on CUDA: stn::affine_sample_forward/backward.
//
// No grid tensor is read or written: a sampling point is a few multiply-adds of its output
// index (p = A·i + b, with A and b folded per sample from θ and the axes), and all index
// arithmetic inside one sample is 32-bit (64-bit division is emulated on GPUs and cost more
// than the sampling itself). The forward is one thread per output point.
//
// The backward takes one of two shapes:
// - "plane" (a channel plane of the input fits in shared memory: 42×42, 60×60, 32×32 ...): one
//   block per sample scatters d input with shared-memory atomics into its planes and writes each
//   one out once, so d input needs no zero fill and no global atomics; the block reduces dθ and
//   writes it directly. One launch in all.
// - "chunked" (larger maps, e.g. 3-D volumes): a grid of point chunks per sample, global atomics
//   into a zeroed d input, and per-block partial dθ sums added up afterwards; deterministic dθ.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>

#include "../affine_sample.h"

namespace stn {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned int kMaxGridY = 65535;
constexpr int64_t kMaxPlaneBlocks = int64_t(1) << 20;
constexpr size_t kPlaneBytes = 48 * 1024;  // shared memory a block gets without opting in

// The regular output grid along each axis (x, y, z): target coordinate t = slope·i + base.
template <int D, typename acc_t>
struct OutputAxes {
  int size[D];
  acc_t slope[D];
  acc_t base[D];
  acc_t scale[D];  // pixel = normalised · scale + shift, on the input's axes
  acc_t shift[D];

  OutputAxes(const AffineAxes<D, acc_t>& ax) {
    for (int a = 0; a < D; ++a) {
      size[a] = static_cast<int>(ax.out[a]);
      const double t0 = target_coord(0, ax.out[a], ax.align_corners);
      base[a] = acc_t(t0);
      slope[a] = ax.out[a] > 1 ? acc_t(target_coord(1, ax.out[a], ax.align_corners) - t0) : acc_t(0);
      scale[a] = ax.scale[a];
      shift[a] = ax.shift[a];
    }
  }

  // Output index of point p (x fastest).
  __device__ __forceinline__ void index_of(int p, int* idx) const {
#pragma unroll
    for (int a = 0; a < D - 1; ++a) {
      const int q = p / size[a];
      idx[a] = p - q * size[a];
      p = q;
    }
    idx[D - 1] = p;
  }

  __device__ __forceinline__ acc_t target(int a, int i) const { return slope[a] * acc_t(i) + base[a]; }
};

// Sampling point (pixel units) of output index i for one sample: p_a = Σ_b coef[a][b]·i_b + off[a].
template <int D, typename acc_t>
struct PointMap {
  acc_t coef[D][D];
  acc_t off[D];

  __device__ __forceinline__ PointMap(const acc_t* th, const OutputAxes<D, acc_t>& ax) {
#pragma unroll
    for (int a = 0; a < D; ++a) {
      acc_t c = th[a * (D + 1) + D];
#pragma unroll
      for (int b = 0; b < D; ++b) {
        c += th[a * (D + 1) + b] * ax.base[b];
        coef[a][b] = ax.scale[a] * th[a * (D + 1) + b] * ax.slope[b];
      }
      off[a] = ax.scale[a] * c + ax.shift[a];
    }
  }

  __device__ __forceinline__ void at(const int* idx, acc_t* px) const {
#pragma unroll
    for (int a = 0; a < D; ++a) {
      acc_t v = off[a];
#pragma unroll
      for (int b = 0; b < D; ++b) v += coef[a][b] * acc_t(idx[b]);
      px[a] = v;
    }
  }
};

template <int D, typename acc_t>
using Taps = LinearTaps<D, acc_t, int>;

// One output point's contribution to the D·(D+1) sums behind dθ, given dL/dp (pixel units):
// p_a = scale_a · (Σ_b θ_ab t_b + θ_aD) + shift_a.
template <int D, typename acc_t>
__device__ __forceinline__ void add_theta_terms(const acc_t* dp, const int* idx, const OutputAxes<D, acc_t>& ax,
                                                acc_t* sums) {
#pragma unroll
  for (int a = 0; a < D; ++a) {
    const acc_t d = dp[a] * ax.scale[a];
#pragma unroll
    for (int b = 0; b < D; ++b) sums[a * (D + 1) + b] += d * ax.target(b, idx[b]);
    sums[a * (D + 1) + D] += d;
  }
}

// dL/dp of one point over `channels` channels, optionally scattering d input into `gin_plane`
// (channel c at gin_plane + c·plane_stride) with atomics.
template <int D, typename scalar_t, typename acc_t>
__device__ __forceinline__ void point_backward(const Taps<D, acc_t>& taps, const scalar_t* src, int64_t S,
                                               const scalar_t* gout, int64_t P, int channels, acc_t* gin_plane,
                                               int64_t plane_stride, bool want_theta, acc_t* dp) {
#pragma unroll
  for (int a = 0; a < D; ++a) dp[a] = acc_t(0);
  for (int c = 0; c < channels; ++c) {
    const acc_t gv = acc_t(gout[c * P]);
    if (gin_plane) {
      acc_t* g = gin_plane + c * plane_stride;
#pragma unroll
      for (int k = 0; k < Taps<D, acc_t>::K; ++k)
        if (taps.mask[k] != acc_t(0)) atomicAdd(g + taps.offset[k], taps.weight[k] * gv);
    }
    if (want_theta) {
      const scalar_t* s = src + c * S;
#pragma unroll
      for (int k = 0; k < Taps<D, acc_t>::K; ++k) {
        const acc_t v = acc_t(s[taps.offset[k]]) * gv;
#pragma unroll
        for (int a = 0; a < D; ++a) dp[a] += v * taps.dweight(k, a);
      }
    }
  }
}

// Sums each of the M per-thread values over the block; thread m < M writes total m to dst[m].
template <int M, typename acc_t>
__device__ __forceinline__ void block_sum(const acc_t* sums, acc_t (*warp_sums)[M], acc_t* dst) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
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
    dst[threadIdx.x] = v;
  }
  __syncthreads();  // warp_sums is reused by the next sample
}

template <int D, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* __restrict__ in, const at::opmath_type<scalar_t>* __restrict__ theta,
                   scalar_t* __restrict__ out, OutputAxes<D, at::opmath_type<scalar_t>> ax, Geometry<D, int> g,
                   int64_t N, int C, int64_t S, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  const int p = blockIdx.x * kThreads + threadIdx.x;
  if (p >= P) return;
  int idx[D];
  ax.index_of(p, idx);
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    acc_t px[D];
    PointMap<D, acc_t>(theta + n * D * (D + 1), ax).at(idx, px);
    Taps<D, acc_t> taps;
    taps.init(px, g);  // an absent point has zero weights
    const scalar_t* src = in + n * C * S;
    scalar_t* dst = out + n * C * P + p;
    for (int c = 0; c < C; ++c) {
      const scalar_t* s = src + c * S;
      acc_t v = acc_t(0);
#pragma unroll
      for (int k = 0; k < Taps<D, acc_t>::K; ++k) v += taps.weight[k] * acc_t(s[taps.offset[k]]);
      dst[c * P] = scalar_t(v);
    }
  }
}

// One block per sample; `chunk` channel planes of d input at a time in shared memory.
template <int D, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_plane_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ in,
                          const at::opmath_type<scalar_t>* __restrict__ theta, at::opmath_type<scalar_t>* __restrict__ gi,
                          at::opmath_type<scalar_t>* __restrict__ gt, OutputAxes<D, at::opmath_type<scalar_t>> ax,
                          Geometry<D, int> g, int64_t N, int C, int64_t S, int64_t P, int chunk) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int M = D * (D + 1);
  extern __shared__ unsigned char plane_bytes[];
  acc_t* plane = reinterpret_cast<acc_t*>(plane_bytes);
  __shared__ acc_t warp_sums[kWarps][M];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const PointMap<D, acc_t> map(theta + n * M, ax);
    acc_t sums[M];
#pragma unroll
    for (int m = 0; m < M; ++m) sums[m] = acc_t(0);
    for (int c0 = 0; c0 < C; c0 += chunk) {
      const int channels = min(chunk, C - c0);
      if (gi) {
        for (int64_t s = threadIdx.x; s < channels * S; s += kThreads) plane[s] = acc_t(0);
        __syncthreads();
      }
      const scalar_t* src = in + (n * C + c0) * S;
      const scalar_t* gout = go + (n * C + c0) * P;
      for (int p = threadIdx.x; p < P; p += kThreads) {
        int idx[D];
        ax.index_of(p, idx);
        acc_t px[D], dp[D];
        map.at(idx, px);
        Taps<D, acc_t> taps;
        if (!taps.init(px, g)) continue;
        point_backward<D, scalar_t, acc_t>(taps, src, S, gout + p, P, channels, gi ? plane : nullptr, S, gt != nullptr, dp);
        if (gt) add_theta_terms<D, acc_t>(dp, idx, ax, sums);
      }
      if (gi) {
        __syncthreads();
        acc_t* dst = gi + (n * C + c0) * S;
        for (int64_t s = threadIdx.x; s < channels * S; s += kThreads) dst[s] = plane[s];
        __syncthreads();  // the plane is zeroed again for the next chunk
      }
    }
    if (gt) block_sum<M, acc_t>(sums, warp_sums, gt + n * M);
  }
}

// Point chunks × samples; d input by global atomics (zeroed by the caller), dθ as per-block partial sums.
template <int D, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_chunked_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ in,
                            const at::opmath_type<scalar_t>* __restrict__ theta, at::opmath_type<scalar_t>* __restrict__ gi,
                            at::opmath_type<scalar_t>* __restrict__ partial, OutputAxes<D, at::opmath_type<scalar_t>> ax,
                            Geometry<D, int> g, int64_t N, int C, int64_t S, int64_t P) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int M = D * (D + 1);
  __shared__ acc_t warp_sums[kWarps][M];
  const int p = blockIdx.x * kThreads + threadIdx.x;
  int idx[D];
  ax.index_of(min(p, static_cast<int>(P) - 1), idx);
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    acc_t sums[M];
#pragma unroll
    for (int m = 0; m < M; ++m) sums[m] = acc_t(0);
    if (p < P) {  // no early return: every thread takes part in the reduction below
      acc_t px[D], dp[D];
      PointMap<D, acc_t>(theta + n * M, ax).at(idx, px);
      Taps<D, acc_t> taps;
      if (taps.init(px, g)) {
        point_backward<D, scalar_t, acc_t>(taps, in + n * C * S, S, go + n * C * P + p, P, C,
                                           gi ? gi + n * C * S : nullptr, S, partial != nullptr, dp);
        if (partial) add_theta_terms<D, acc_t>(dp, idx, ax, sums);
      }
    }
    if (partial) block_sum<M, acc_t>(sums, warp_sums, partial + (n * gridDim.x + blockIdx.x) * M);
  }
}

inline void check_index_range(const at::Tensor& input, int64_t points) {
  TORCH_CHECK(spatial_numel(input) < INT_MAX && points < INT_MAX && input.size(1) < INT_MAX,
              "stn.affine_sample (CUDA): one sample's map and output must each hold fewer than 2^31 points");
}

template <int D, typename scalar_t>
struct Forward {
  static void run(const at::Tensor& input, const at::Tensor& theta, at::Tensor& out, at::IntArrayRef out_size,
                  bool align_corners) {
    using acc_t = at::opmath_type<scalar_t>;
    const c10::cuda::CUDAGuard guard(input.device());
    const OutputAxes<D, acc_t> ax(AffineAxes<D, acc_t>(input, out_size, align_corners));
    const int64_t N = input.size(0), P = out.numel() / (N * input.size(1));
    check_index_range(input, P);
    const at::Tensor th = theta.to(at::toOpMathType(theta.scalar_type())).contiguous();
    const dim3 blocks(static_cast<unsigned int>((P + kThreads - 1) / kThreads),
                      static_cast<unsigned int>(std::min<int64_t>(N, kMaxGridY)));
    forward_kernel<D, scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        input.const_data_ptr<scalar_t>(), th.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), ax,
        geometry_from_sizes<D, int>(input.sizes().data() + 2), N, static_cast<int>(input.size(1)),
        spatial_numel(input), P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <int D, typename scalar_t>
struct Backward {
  // Writes every element of gi and gt (the chunked shape zeroes gi for its atomics first).
  static void run(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& theta, at::Tensor* gi,
                  at::Tensor* gt, at::IntArrayRef out_size, bool align_corners) {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int M = D * (D + 1);
    const c10::cuda::CUDAGuard guard(input.device());
    const OutputAxes<D, acc_t> ax(AffineAxes<D, acc_t>(input, out_size, align_corners));
    const int64_t N = input.size(0), C = input.size(1), S = spatial_numel(input), P = grad_out.numel() / (N * C);
    check_index_range(input, P);
    const at::Tensor th = theta.to(at::toOpMathType(theta.scalar_type())).contiguous();
    const Geometry<D, int> g = geometry_from_sizes<D, int>(input.sizes().data() + 2);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    acc_t* gi_data = gi ? gi->mutable_data_ptr<acc_t>() : nullptr;
    // The planes share the block's shared memory with the kernel's static reduction buffer.
    const int64_t chunk = std::min<int64_t>(C, (kPlaneBytes - kWarps * M * sizeof(acc_t)) / (S * sizeof(acc_t)));
    if (chunk > 0) {
      const size_t smem = gi ? chunk * S * sizeof(acc_t) : 0;
      backward_plane_kernel<D, scalar_t><<<static_cast<unsigned int>(std::min(N, kMaxPlaneBlocks)), kThreads, smem, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), th.const_data_ptr<acc_t>(), gi_data,
          gt ? gt->mutable_data_ptr<acc_t>() : nullptr, ax, g, N, static_cast<int>(C), S, P, static_cast<int>(chunk));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    if (gi) gi->zero_();
    const dim3 blocks(static_cast<unsigned int>((P + kThreads - 1) / kThreads),
                      static_cast<unsigned int>(std::min<int64_t>(N, kMaxGridY)));
    at::Tensor partial;
    if (gt) partial = at::empty({N, static_cast<int64_t>(blocks.x), M}, th.options());
    backward_chunked_kernel<D, scalar_t><<<blocks, kThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), th.const_data_ptr<acc_t>(), gi_data,
        gt ? partial.mutable_data_ptr<acc_t>() : nullptr, ax, g, N, static_cast<int>(C), S, P);
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
