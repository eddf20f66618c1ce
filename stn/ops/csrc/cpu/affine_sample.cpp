// Fused affine transformer on the CPU: stn::affine_sample_forward/backward.
//
// Why it is fast: the sampling points of one output row are an affine function of the column
// index, so they cost one multiply-add per axis and are never stored; the backward reduces the
// grid gradient straight into the D·(D+1) sums that dθ needs instead of writing dgrid. Each
// sample is first copied into a zero-bordered tile, so every tap of a point that is present lands
// inside the tile (no bounds checks) and an absent point reads the tile's zero corner; d input is
// scattered into a private tile of the same shape, without atomics. Parallel over samples.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>
#include <torch/library.h>

#include "../affine_sample.h"

namespace stn {
namespace {

// One sample's channels in a channels-last tile with a one-pixel zero border on every side:
// element (position, c) lives at position * C + c, so the C values of one kernel tap are
// contiguous (one vector load per tap for C > 1) and a tap never needs a bounds check.
template <int D, typename acc_t>
struct PaddedTile {
  static constexpr int K = 1 << D;
  int64_t in[D];
  int64_t stride[D];  // position strides, axes in (x, y, z) order
  int64_t positions = 1;
  int64_t channels;
  int32_t corner[K];  // element offset of each kernel tap from tap 0
  std::vector<acc_t> data;

  PaddedTile(const int64_t* in_sizes, int64_t c) : channels(c) {
    for (int a = 0; a < D; ++a) {
      in[a] = in_sizes[a];
      stride[a] = positions;
      positions *= in[a] + 2;
    }
    TORCH_CHECK(positions * std::max<int64_t>(c, 1) < (int64_t(1) << 31), "stn.affine_sample (cpp): one sample holds ",
                positions * c, " elements with its border; the CPU kernel supports fewer than 2^31");
    for (int k = 0; k < K; ++k) {
      corner[k] = 0;
      for (int a = 0; a < D; ++a) corner[k] += static_cast<int32_t>(((k >> a) & 1) * stride[a] * c);
    }
    data.assign(static_cast<size_t>(positions * channels), acc_t(0));
  }

  int64_t rows() const { return D == 2 ? in[1] : in[1] * in[D - 1]; }

  // Position of the first interior element of input row r (rows in (z, y) order).
  int64_t row_position(int64_t r) const {
    const int64_t y = r % in[1], z = D == 3 ? r / in[1] : 0;
    return (y + 1) * stride[1] + (D == 3 ? (z + 1) * stride[D - 1] : 0) + 1;
  }

  template <typename scalar_t>
  void load(const scalar_t* src) {
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t r = 0; r < rows(); ++r) {
        acc_t* dst = data.data() + row_position(r) * channels + c;
        const scalar_t* s = src + (c * rows() + r) * in[0];
        for (int64_t x = 0; x < in[0]; ++x) dst[x * channels] = acc_t(s[x]);
      }
  }

  void store(acc_t* dst) const {
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t r = 0; r < rows(); ++r) {
        const acc_t* s = data.data() + row_position(r) * channels + c;
        acc_t* d = dst + (c * rows() + r) * in[0];
        for (int64_t x = 0; x < in[0]; ++x) d[x] = s[x * channels];
      }
  }

  void zero() { std::fill(data.begin(), data.end(), acc_t(0)); }
};

// The sampling points of one output row: tile offset of tap 0 and fractional parts per axis.
// An absent point (outside the map or not finite) gets offset 0 (the tile's zero corner) and
// zero fractions, so it reads zero, and `present` 0, so it passes no gradient.
template <int D, typename acc_t>
struct RowTaps {
  std::vector<int32_t> off;
  std::vector<acc_t> frac[D];
  std::vector<acc_t> present;

  explicit RowTaps(int64_t width) : off(width), present(width) {
    for (int a = 0; a < D; ++a) frac[a].resize(width);
  }

  // Points p_a(j) = slope[a] * xt[j] + intercept[a] in pixel units.
  void compute(const acc_t* slope, const acc_t* intercept, const std::vector<acc_t>& xt, const PaddedTile<D, acc_t>& t) {
    const int64_t width = static_cast<int64_t>(xt.size());
    for (int64_t j = 0; j < width; ++j) {
      acc_t p[D];
      bool ok = true;
      for (int a = 0; a < D; ++a) {
        p[a] = slope[a] * xt[j] + intercept[a];
        ok = ok & (p[a] >= acc_t(-1)) & (p[a] < acc_t(t.in[a]));  // false for NaN
      }
      int32_t o = 0;
      for (int a = 0; a < D; ++a) {
        const acc_t c = ok ? p[a] : acc_t(-1);
        const acc_t f = std::floor(c);
        frac[a][j] = c - f;
        o += (static_cast<int32_t>(f) + 1) * static_cast<int32_t>(t.stride[a]);
      }
      off[j] = o * static_cast<int32_t>(t.channels);
      present[j] = ok ? acc_t(1) : acc_t(0);
    }
  }

  void fractions(int64_t j, acc_t* f) const {
    for (int a = 0; a < D; ++a) f[a] = frac[a][j];
  }
};

// Multilinear interpolation of the 2^D tap values v (bit a of the index = upper neighbour on axis a).
template <int D, typename acc_t>
inline acc_t interpolate(const acc_t* values, const acc_t* f) {
  acc_t v[1 << D];
  for (int k = 0; k < (1 << D); ++k) v[k] = values[k];
  for (int a = 0; a < D; ++a)
    for (int m = 0; m < (1 << (D - 1 - a)); ++m) v[m] = v[2 * m] + f[a] * (v[2 * m + 1] - v[2 * m]);
  return v[0];
}

// d interpolate / d f[a]: the interpolation over the other axes of the differences along axis a.
template <int D, typename acc_t>
inline acc_t interpolate_grad(const acc_t* v, const acc_t* f, int a) {
  constexpr int H = 1 << (D - 1);
  acc_t diff[H], rest[D - 1];
  for (int m = 0; m < H; ++m) {
    const int k0 = (m & ((1 << a) - 1)) | ((m >> a) << (a + 1));
    diff[m] = v[k0 | (1 << a)] - v[k0];
  }
  for (int b = 0, i = 0; b < D; ++b)
    if (b != a) rest[i++] = f[b];
  return interpolate<D - 1, acc_t>(diff, rest);
}

// Kernel weight of each tap (bit a of k = upper neighbour on axis a) and its derivative in f[a].
template <int D, typename acc_t>
inline void tap_weights(const acc_t* f, acc_t* w) {
  for (int k = 0; k < (1 << D); ++k) {
    w[k] = acc_t(1);
    for (int a = 0; a < D; ++a) w[k] *= ((k >> a) & 1) ? f[a] : acc_t(1) - f[a];
  }
}

// Per-sample geometry of the output rows: target coordinates and the affine map to pixels.
template <int D, typename acc_t>
struct RowMap {
  const AffineAxes<D, acc_t>& axes;
  std::vector<double> target[D];  // normalised target coordinates per output axis
  std::vector<acc_t> xt;          // target[0] in acc_t
  int64_t rows = 1;

  explicit RowMap(const AffineAxes<D, acc_t>& ax) : axes(ax) {
    for (int a = 0; a < D; ++a) {
      target[a].resize(ax.out[a]);
      for (int64_t i = 0; i < ax.out[a]; ++i) target[a][i] = target_coord(i, ax.out[a], ax.align_corners);
      if (a > 0) rows *= ax.out[a];
    }
    xt.assign(target[0].begin(), target[0].end());
  }

  // Normalised target coordinates (x unused) of output row r.
  void row_coords(int64_t r, double* t) const {
    t[0] = 0.0;
    t[1] = target[1][r % axes.out[1]];
    if (D == 3) t[2] = target[D - 1][r / axes.out[1]];
  }

  // slope/intercept of p_a(j) = slope[a] * xt[j] + intercept[a] for θ (D x (D+1), row-major).
  void line(const acc_t* theta, const double* t, acc_t* slope, acc_t* intercept) const {
    for (int a = 0; a < D; ++a) {
      const acc_t* row = theta + a * (D + 1);
      double c = double(row[D]);
      for (int b = 1; b < D; ++b) c += double(row[b]) * t[b];
      slope[a] = row[0] * axes.scale[a];
      intercept[a] = acc_t(c * double(axes.scale[a]) + double(axes.shift[a]));
    }
  }
};

// FIXED_C is the channel count when known at compile time (1), else 0: single-channel maps, the
// common case, get loops without a channel dimension.
template <int D, typename scalar_t, int FIXED_C>
void forward_kernel(const at::Tensor& input, const at::Tensor& theta, at::Tensor& out, at::IntArrayRef out_size,
                    bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = 1 << D;
  const int64_t N = input.size(0), C = FIXED_C ? FIXED_C : input.size(1);
  const AffineAxes<D, acc_t> axes(input, out_size, align_corners);
  const RowMap<D, acc_t> map(axes);
  const int64_t W = axes.out[0], P = W * map.rows, S = input.numel() / std::max<int64_t>(N, 1);
  const at::Tensor theta_acc = theta.to(at::toOpMathType(theta.scalar_type()));
  const acc_t* th = theta_acc.const_data_ptr<acc_t>();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    PaddedTile<D, acc_t> tile(axes.in, C);
    RowTaps<D, acc_t> taps(W);
    std::vector<acc_t> row(W * C);  // one output row, channels last
    for (int64_t n = begin; n < end; ++n) {
      tile.load(in + n * S);
      double t[3];
      acc_t slope[D], intercept[D];
      for (int64_t r = 0; r < map.rows; ++r) {
        map.row_coords(r, t);
        map.line(th + n * D * (D + 1), t, slope, intercept);
        taps.compute(slope, intercept, map.xt, tile);
        for (int64_t j = 0; j < W; ++j) {
          acc_t f[D], w[K];
          taps.fractions(j, f);
          const acc_t* src = tile.data.data() + taps.off[j];
          acc_t* dst = row.data() + j * C;
          if (FIXED_C == 1) {
            acc_t v[K];
            for (int k = 0; k < K; ++k) v[k] = src[tile.corner[k]];
            dst[0] = interpolate<D, acc_t>(v, f);
            continue;
          }
          tap_weights<D, acc_t>(f, w);
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            acc_t v = acc_t(0);
            for (int k = 0; k < K; ++k) v += w[k] * src[tile.corner[k] + c];
            dst[c] = v;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          scalar_t* dst = o + (n * C + c) * P + r * W;
          for (int64_t j = 0; j < W; ++j) dst[j] = scalar_t(row[j * C + c]);
        }
      }
    }
  });
}

template <int D, typename scalar_t, int FIXED_C, bool INPUT_GRAD, bool THETA_GRAD>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& theta, at::Tensor* gi,
                     at::Tensor* gt, at::IntArrayRef out_size, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = 1 << D;
  const int64_t N = input.size(0), C = FIXED_C ? FIXED_C : input.size(1);
  const AffineAxes<D, acc_t> axes(input, out_size, align_corners);
  const RowMap<D, acc_t> map(axes);
  const int64_t W = axes.out[0], P = W * map.rows, S = input.numel() / std::max<int64_t>(N, 1);
  const at::Tensor theta_acc = theta.to(at::toOpMathType(theta.scalar_type()));
  const acc_t* th = theta_acc.const_data_ptr<acc_t>();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  acc_t* gin = INPUT_GRAD ? gi->mutable_data_ptr<acc_t>() : nullptr;
  acc_t* gth = THETA_GRAD ? gt->mutable_data_ptr<acc_t>() : nullptr;

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    PaddedTile<D, acc_t> tile(axes.in, THETA_GRAD ? C : 0);
    PaddedTile<D, acc_t> dtile(axes.in, INPUT_GRAD ? C : 0);
    const PaddedTile<D, acc_t>& geometry = THETA_GRAD ? tile : dtile;
    RowTaps<D, acc_t> taps(W);
    std::vector<acc_t> grad_row(W * C);  // dL/d output of one row, channels last; zero at absent points
    std::vector<acc_t> dpoint[D];        // dL/d(pixel coordinate) per point of the row
    for (int a = 0; a < D; ++a) dpoint[a].resize(W);
    for (int64_t n = begin; n < end; ++n) {
      if (THETA_GRAD) tile.load(in + n * S);
      if (INPUT_GRAD) dtile.zero();
      double dtheta[D][D + 1] = {};
      double t[3];
      acc_t slope[D], intercept[D];
      for (int64_t r = 0; r < map.rows; ++r) {
        map.row_coords(r, t);
        map.line(th + n * D * (D + 1), t, slope, intercept);
        taps.compute(slope, intercept, map.xt, geometry);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* g = go + (n * C + c) * P + r * W;
          for (int64_t j = 0; j < W; ++j) grad_row[j * C + c] = acc_t(g[j]) * taps.present[j];
        }
        if (THETA_GRAD) {
          for (int64_t j = 0; j < W; ++j) {
            acc_t f[D], tap_sum[K];  // tap_sum[k] = Σ_c value of tap k · grad
            taps.fractions(j, f);
            const acc_t* src = tile.data.data() + taps.off[j];
            const acc_t* gr = grad_row.data() + j * C;
            for (int k = 0; k < K; ++k) {
              const acc_t* v = src + tile.corner[k];
              acc_t sum = acc_t(0);
              if (FIXED_C == 1) {
                sum = v[0] * gr[0];
              } else {
#pragma omp simd reduction(+ : sum)
                for (int64_t c = 0; c < C; ++c) sum += v[c] * gr[c];
              }
              tap_sum[k] = sum;
            }
            // the kernel is linear in the tap values, so d/dp_a of Σ_c g_c·value_c interpolates tap_sum
            for (int a = 0; a < D; ++a) dpoint[a][j] = interpolate_grad<D, acc_t>(tap_sum, f, a);
          }
          // p_a = scale_a * (θ_a0 x + θ_a1 y [+ θ_a2 z] + θ_aD) + shift_a, with y, z fixed along the row.
          for (int a = 0; a < D; ++a) {
            acc_t along = acc_t(0), total = acc_t(0);
            for (int64_t j = 0; j < W; ++j) {
              along += dpoint[a][j] * map.xt[j];
              total += dpoint[a][j];
            }
            dtheta[a][0] += double(along);
            for (int b = 1; b < D; ++b) dtheta[a][b] += double(total) * t[b];
            dtheta[a][D] += double(total);
          }
        }
        if (INPUT_GRAD) {
          for (int64_t j = 0; j < W; ++j) {
            acc_t f[D], w[K];
            taps.fractions(j, f);
            tap_weights<D, acc_t>(f, w);
            acc_t* dst = dtile.data.data() + taps.off[j];
            const acc_t* gr = grad_row.data() + j * C;
            for (int k = 0; k < K; ++k) {
              acc_t* d = dst + dtile.corner[k];
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) d[c] += w[k] * gr[c];
            }
          }
        }
      }
      if (INPUT_GRAD) dtile.store(gin + n * S);
      if (THETA_GRAD)
        for (int a = 0; a < D; ++a)
          for (int b = 0; b <= D; ++b) gth[(n * D + a) * (D + 1) + b] = acc_t(dtheta[a][b] * double(axes.scale[a]));
    }
  });
}

// The CPU kernels are built for float and double; transform_sample keeps half and bfloat16 on
// the CPU on the unfused path.
template <typename scalar_t>
constexpr bool kCpuType = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;

template <typename scalar_t>
void check_cpu_type() {
  TORCH_CHECK(kCpuType<scalar_t>, "stn.affine_sample (cpp) supports float32 and float64, got ",
              c10::CppTypeToScalarType<scalar_t>::value, "; use stn.sample with a grid for this dtype");
}

template <int D, typename scalar_t>
struct Forward {
  static void run(const at::Tensor& input, const at::Tensor& theta, at::Tensor& out, at::IntArrayRef out_size,
                  bool align_corners) {
    check_cpu_type<scalar_t>();
    if constexpr (kCpuType<scalar_t>) {
      if (input.size(1) == 1) forward_kernel<D, scalar_t, 1>(input, theta, out, out_size, align_corners);
      else forward_kernel<D, scalar_t, 0>(input, theta, out, out_size, align_corners);
    }
  }
};

template <int D, typename scalar_t>
struct Backward {
  template <int FIXED_C>
  static void run_for(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& theta, at::Tensor* gi,
                      at::Tensor* gt, at::IntArrayRef out_size, bool align_corners) {
    if (gi && gt) backward_kernel<D, scalar_t, FIXED_C, true, true>(grad_out, input, theta, gi, gt, out_size, align_corners);
    if (gi && !gt) backward_kernel<D, scalar_t, FIXED_C, true, false>(grad_out, input, theta, gi, gt, out_size, align_corners);
    if (!gi && gt) backward_kernel<D, scalar_t, FIXED_C, false, true>(grad_out, input, theta, gi, gt, out_size, align_corners);
  }

  static void run(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& theta, at::Tensor* gi,
                  at::Tensor* gt, at::IntArrayRef out_size, bool align_corners) {
    check_cpu_type<scalar_t>();
    if constexpr (kCpuType<scalar_t>) {
      if (input.size(1) == 1) run_for<1>(grad_out, input, theta, gi, gt, out_size, align_corners);
      else run_for<0>(grad_out, input, theta, gi, gt, out_size, align_corners);
    }
  }
};

at::Tensor affine_sample_forward_cpu(const at::Tensor& input, const at::Tensor& theta, at::IntArrayRef out_size,
                                     bool align_corners) {
  return affine_sample_forward_impl<Forward>(input, theta, out_size, align_corners);
}

std::tuple<at::Tensor, at::Tensor> affine_sample_backward_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                                                              const at::Tensor& theta, at::IntArrayRef out_size,
                                                              bool align_corners, bool input_grad, bool theta_grad) {
  return affine_sample_backward_impl<Backward>(grad_out, input, theta, out_size, align_corners, input_grad, theta_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(stn, CPU, m) {
  m.impl("affine_sample_forward", &affine_sample_forward_cpu);
  m.impl("affine_sample_backward", &affine_sample_backward_cpu);
}

}  // namespace stn
