// C++ CPU sampler: forward and backward of stn::sample_* (paper eqs. 3-7, 9), parallel with at::parallel_for.
//
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>
#include <torch/library.h>

#include "../sampler.h"

namespace stn {
namespace {

// Points are processed in tiles: the kernel taps of a tile are computed once, in branch-free
// structure-of-arrays loops the compiler vectorises, and then applied channel by channel, so
// each channel's input slice stays in cache and outputs are written contiguously. Offsets are
// 32-bit (one channel of a map must hold fewer than 2^31 elements; checked by the caller).
constexpr int64_t kTile = 256;

template <int D, typename acc_t>
struct Tile {
  static constexpr int K = 1 << D;
  int32_t offset[K][kTile];  // nearest mode uses offset[0]
  acc_t weight[K][kTile];
  acc_t dweight[K][D][kTile];
  int64_t size = 0;

  // Fills taps for points [begin, end) of one sample; absent points get zero weights and offsets.
  template <int MODE, typename scalar_t>
  void fill(const scalar_t* __restrict__ grid, int64_t begin, int64_t end, const Geometry<D>& g, bool align_corners,
            bool grads) {
    size = end - begin;
    grid += begin * D;
    acc_t present[kTile];
    acc_t frac[D][kTile];
    int32_t base[D][kTile];
    for (int64_t i = 0; i < size; ++i) present[i] = acc_t(1);
    for (int a = 0; a < D; ++a) {
      // Outside [-1, size) no tap of either kernel is inside; finer bounds are checked per tap.
      const acc_t lo = acc_t(-1), hi = acc_t(g.size[a]);
      // unnormalize() as one multiply-add, hoisted out of the loop so it vectorises.
      const acc_t mul = unnormalize_scale<acc_t>(g.size[a], align_corners);
      const acc_t add = align_corners ? mul : acc_t(g.size[a] - 1) / acc_t(2);
      acc_t coord[kTile];
      for (int64_t i = 0; i < size; ++i) coord[i] = acc_t(grid[i * D + a]);
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) {
        acc_t c = coord[i] * mul + add;
        const bool ok = (c >= lo) & (c < hi);  // false for NaN
        c = ok ? c : acc_t(0);
        const acc_t f = MODE == kNearest ? round_even(c) : floor_(c);
        base[a][i] = static_cast<int32_t>(f);
        frac[a][i] = c - f;
        present[i] = ok ? present[i] : acc_t(0);
      }
    }
    int32_t sizes[D], strides[D];
    for (int a = 0; a < D; ++a) {
      sizes[a] = static_cast<int32_t>(g.size[a]);
      strides[a] = static_cast<int32_t>(g.stride[a]);
    }
    // Corner loops use arithmetic masks (no short-circuit control flow) so they vectorise.
    for (int k = 0; k < (MODE == kNearest ? 1 : K); ++k) {
      for (int64_t i = 0; i < size; ++i) {
        int32_t off = 0;
        acc_t inside = present[i];
        acc_t w = acc_t(1);
        for (int a = 0; a < D; ++a) {
          const int bit = MODE == kNearest ? 0 : (k >> a) & 1;
          const int32_t idx = base[a][i] + bit;
          inside *= ((idx >= 0) & (idx < sizes[a])) ? acc_t(1) : acc_t(0);
          off += idx * strides[a];
          w *= bit ? frac[a][i] : acc_t(1) - frac[a][i];
        }
        offset[k][i] = inside != acc_t(0) ? off : 0;
        weight[k][i] = MODE == kNearest ? inside : inside * w;
        if (MODE == kBilinear && grads) {
          for (int a = 0; a < D; ++a) {
            acc_t dw = ((k >> a) & 1) ? inside : -inside;
            for (int b = 0; b < D; ++b)
              if (b != a) dw *= ((k >> b) & 1) ? frac[b][i] : acc_t(1) - frac[b][i];
            dweight[k][a][i] = dw;
          }
        }
      }
    }
  }
};

template <int D, int MODE, typename scalar_t>
void forward_kernel(const at::Tensor& input, const at::Tensor& grid, at::Tensor& out, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = MODE == kNearest ? 1 : (1 << D);
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t S = spatial_numel(input), P = points_per_sample(grid);
  const Geometry<D> g = geometry_from_sizes<D>(input.sizes().data() + 2);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* gr = grid.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  TORCH_CHECK(S < (int64_t(1) << 31), "stn.sample (cpp): one channel of the input holds ", S,
              " elements; the CPU kernel supports fewer than 2^31");
  const int64_t tiles = (P + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (kTile * C * K));

  at::parallel_for(0, N * tiles, grain, [&](int64_t begin, int64_t end) {
    auto tile = std::make_unique<Tile<D, acc_t>>();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / tiles, p0 = (t % tiles) * kTile;
      tile->template fill<MODE>(gr + n * P * D, p0, std::min(P, p0 + kTile), g, align_corners, false);
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = in + (n * C + c) * S;
        scalar_t* dst = o + (n * C + c) * P + p0;
        for (int64_t i = 0; i < tile->size; ++i) {
          acc_t v = acc_t(0);
          for (int k = 0; k < K; ++k) v += tile->weight[k][i] * acc_t(src[tile->offset[k][i]]);
          dst[i] = scalar_t(v);
        }
      }
    }
  });
}

// Parallel over batch elements: each thread owns the d input slice it scatters into.
template <int D, int MODE, typename scalar_t>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grid, at::Tensor* grad_input_acc,
                     at::Tensor* grad_grid, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = MODE == kNearest ? 1 : (1 << D);
  const int64_t N = input.size(0), C = input.size(1);
  const int64_t S = spatial_numel(input), P = points_per_sample(grid);
  const Geometry<D> g = geometry_from_sizes<D>(input.sizes().data() + 2);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* gr = grid.const_data_ptr<scalar_t>();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  acc_t* gi = grad_input_acc ? grad_input_acc->mutable_data_ptr<acc_t>() : nullptr;
  scalar_t* gg = grad_grid ? grad_grid->mutable_data_ptr<scalar_t>() : nullptr;
  const bool grid_grads = gg != nullptr && MODE == kBilinear;  // nearest: zero grid gradient (zero-filled)
  TORCH_CHECK(S < (int64_t(1) << 31), "stn.sample (cpp): one channel of the input holds ", S,
              " elements; the CPU kernel supports fewer than 2^31");
  acc_t scale[D];
  for (int a = 0; a < D; ++a) scale[a] = unnormalize_scale<acc_t>(g.size[a], align_corners);

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    auto tile = std::make_unique<Tile<D, acc_t>>();
    std::vector<acc_t> acc(kTile * D);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t p0 = 0; p0 < P; p0 += kTile) {
        tile->template fill<MODE>(gr + n * P * D, p0, std::min(P, p0 + kTile), g, align_corners, grid_grads);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* src = in + (n * C + c) * S;
          const scalar_t* gout = go + (n * C + c) * P + p0;
          acc_t* gin = gi ? gi + (n * C + c) * S : nullptr;
          // One tap at a time over the tile: neighbouring points then hit different addresses, so
          // the scatter's read-modify-writes do not wait on each other through memory.
          if (gin)
            for (int k = 0; k < K; ++k)
              for (int64_t i = 0; i < tile->size; ++i) gin[tile->offset[k][i]] += tile->weight[k][i] * acc_t(gout[i]);
          if (grid_grads)
            for (int64_t i = 0; i < tile->size; ++i) {
              acc_t v[K];
              for (int k = 0; k < K; ++k) v[k] = acc_t(src[tile->offset[k][i]]) * acc_t(gout[i]);
              for (int a = 0; a < D; ++a) {
                acc_t d = acc_t(0);
                for (int k = 0; k < K; ++k) d += v[k] * tile->dweight[k][a][i];
                acc[a * kTile + i] += d;
              }
            }
        }
        if (grid_grads)
          for (int64_t i = 0; i < tile->size; ++i)
            for (int a = 0; a < D; ++a) gg[(n * P + p0 + i) * D + a] = scalar_t(acc[a * kTile + i] * scale[a]);
      }
    }
  });
}

template <int D, int MODE, typename scalar_t>
struct Forward {
  static void run(const at::Tensor& input, const at::Tensor& grid, at::Tensor& out, bool align_corners) {
    forward_kernel<D, MODE, scalar_t>(input, grid, out, align_corners);
  }
};

template <int D, int MODE, typename scalar_t>
struct Backward {
  static void run(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grid, at::Tensor* gi,
                  at::Tensor* gg, bool align_corners) {
    backward_kernel<D, MODE, scalar_t>(grad_out, input, grid, gi, gg, align_corners);
  }
};

at::Tensor sample_forward_cpu(const at::Tensor& input, const at::Tensor& grid, int64_t mode, bool align_corners) {
  return sample_forward_impl<Forward>(input, grid, mode, align_corners);
}

std::tuple<at::Tensor, at::Tensor> sample_backward_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                                                       const at::Tensor& grid, int64_t mode, bool align_corners,
                                                       bool input_grad, bool grid_grad) {
  return sample_backward_impl<Backward>(grad_out, input, grid, mode, align_corners, input_grad, grid_grad);
}

}  // namespace

// Every op of the library is declared here, once; kernels register per device in their own files.
TORCH_LIBRARY(stn, m) {
  m.def("sample_forward(Tensor input, Tensor grid, int mode, bool align_corners) -> Tensor");
  m.def(
      "sample_backward(Tensor grad_output, Tensor input, Tensor grid, int mode, bool align_corners, bool input_grad, "
      "bool grid_grad) -> (Tensor, Tensor)");
  m.def("affine_sample_forward(Tensor input, Tensor theta, int[] out_size, bool align_corners) -> Tensor");
  m.def(
      "affine_sample_backward(Tensor grad_output, Tensor input, Tensor theta, int[] out_size, bool align_corners, "
      "bool input_grad, bool theta_grad) -> (Tensor, Tensor)");
  // relu_max_pool.cpp: ReLU then 2x2 max pooling; `which` is the forward's uint8 map of the winning inputs
  m.def("relu_max_pool2d_forward(Tensor input) -> (Tensor, Tensor)");
  m.def("relu_max_pool2d_backward(Tensor grad_output, Tensor which, int[] input_size) -> Tensor");
  // fold.cpp: col2im of a convolution's columns (stride 1) into a map in float32 or wider
  m.def("fold(Tensor columns, int[] output_size, int[] kernel_size, int[] padding) -> Tensor");
  // homography.cpp: a projective grid's points (M·Bᵀ divided by its last row, held eps from zero) and their backward
  m.def("homography_points(Tensor matrix, Tensor basis, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("homography_points_backward(Tensor grad, Tensor points, Tensor inv, Tensor held) -> Tensor");
}

TORCH_LIBRARY_IMPL(stn, CPU, m) {
  m.impl("sample_forward", &sample_forward_cpu);
  m.impl("sample_backward", &sample_backward_cpu);
}

}  // namespace stn
