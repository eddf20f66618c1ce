// Fused affine transformer on the CPU: stn::affine_sample_forward/backward.
//
// Why it is fast: the sampling points are an affine function of the output coordinates, so they
// cost a few multiply-adds per axis, computed for a chunk of rows at a time and never written out
// as a grid; the backward reduces the grid gradient straight into the D·(D+1) sums that dθ needs
// instead of writing dgrid. Each sample is first copied into a zero-bordered tile, so every tap of
// a point that is present lands inside the tile (no bounds checks) and an absent point reads the
// tile's zero corner; d input is scattered into a private tile of the same shape, without
// atomics. With one channel the loops over a chunk's points are vectorised (taps gathered as
// x-pairs); with several, the loops over channels. Parallel over samples.
#include <ATen/Parallel.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#include <torch/library.h>

#include "../affine_sample.h"
#include "bits.h"

namespace stn {
namespace {

// dst[j * dst_j + c * dst_c] = f(src[j * src_j + c * src_c], j) for j < J, c < C: a layout change
// between channels-first and channels-last buffers. In blocks of 16 positions, so the lines one
// block touches on either side (C·16 values each) stay in L1 while it is transposed; the scalar
// loop that walked one whole channel at a time missed L1 on every strided access. Both sides
// should be cache-resident: tensors in memory are staged with `copy_cast` (one sequential run).
template <typename S, typename T, typename F>
inline void relayout(const S* src, int64_t src_j, int64_t src_c, T* dst, int64_t dst_j, int64_t dst_c, int64_t J,
                     int64_t C, F f) {
  if (src_j == 1 && dst_j == 1) {  // no transposition (C = 1): plain runs
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < J; ++j) dst[c * dst_c + j] = f(src[c * src_c + j], j);
    return;
  }
  constexpr int64_t B = 16;
  for (int64_t j0 = 0; j0 < J; j0 += B) {
    const int64_t jn = std::min(B, J - j0);
    for (int64_t c = 0; c < C; ++c) {
      const S* s = src + c * src_c + j0 * src_j;
      T* d = dst + c * dst_c + j0 * dst_j;
      for (int64_t j = 0; j < jn; ++j) d[j * dst_j] = f(s[j * src_j], j0 + j);
    }
  }
}

// dst[i] = T(src[i]) for i < n: moves one sample between a tensor in memory and a cache-resident
// staging buffer as a single sequential run. Reading or writing the C channel planes of a row
// directly interleaves C short runs, more streams than the hardware prefetcher follows (C = 32
// spent two thirds of the forward there).
template <typename S, typename T>
inline void copy_cast(const S* src, T* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = T(src[i]);
}

#if defined(__AVX__)
// The 8x8 float block at src (rows `ss` apart) transposed into dst (rows `ds` apart), in registers:
// pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped.
inline void transpose8x8(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // a(i,0) a(i+1,0) a(i,1) a(i+1,1) | same for columns 4, 5
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // columns 2, 3 | 6, 7
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));      // column 0 | 4, rows i..i+3
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));  // column 1 | 5
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));  // column 2 | 6
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));  // column 3 | 7
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}
#endif

// relayout with plain values (converted to T): where one side is channels-last (its channels
// contiguous) and the other channels-first (its positions contiguous), float to float, and AVX
// exists, 8x8 blocks go through registers (transpose8x8), the edges through relayout. The scalar
// loop moved one value per instruction; this was 15% of the C = 32 backward.
template <typename S, typename T>
inline void transpose(const S* src, int64_t src_j, int64_t src_c, T* dst, int64_t dst_j, int64_t dst_c, int64_t J,
                      int64_t C) {
  if (src_j == 1 && dst_j == 1) {  // no transposition (C = 1): a run per channel
    for (int64_t c = 0; c < C; ++c) copy_cast(src + c * src_c, dst + c * dst_c, J);
    return;
  }
  const auto plain = [](S v, int64_t) { return T(v); };
  int64_t J8 = 0, C8 = 0;
#if defined(__AVX__)
  if constexpr (std::is_same_v<S, float> && std::is_same_v<T, float>) {
    const bool last_to_first = src_c == 1 && dst_j == 1, first_to_last = src_j == 1 && dst_c == 1;
    if (last_to_first != first_to_last) {
      J8 = J / 8 * 8;
      C8 = C / 8 * 8;
      for (int64_t c0 = 0; c0 < C8; c0 += 8)
        for (int64_t j0 = 0; j0 < J8; j0 += 8) {
          const float* s = src + j0 * src_j + c0 * src_c;
          float* d = dst + j0 * dst_j + c0 * dst_c;
          if (last_to_first) transpose8x8(s, src_j, d, dst_c);
          else transpose8x8(s, src_c, d, dst_j);
        }
    }
  }
#endif
  if (J8 == 0 || C8 == 0) return relayout(src, src_j, src_c, dst, dst_j, dst_c, J, C, plain);
  if (C8 < C)  // the channels past the last block, every position
    relayout(src + C8 * src_c, src_j, src_c, dst + C8 * dst_c, dst_j, dst_c, J, C - C8, plain);
  if (J8 < J)  // the positions past the last block, the blocked channels
    relayout(src + J8 * src_j, src_j, src_c, dst + J8 * dst_j, dst_j, dst_c, J - J8, C8, plain);
}

// dst[c * dst_stride + i] = T(src[c * src_stride + i]) for i < plane, c < C: one sequential run per channel.
template <typename S, typename T>
inline void copy_planes(const S* src, int64_t src_stride, T* dst, int64_t dst_stride, int64_t plane, int64_t C) {
  for (int64_t c = 0; c < C; ++c) copy_cast(src + c * src_stride, dst + c * dst_stride, plane);
}

// Channel stride of a staged sample: its plane rounded up to 16 values and kept off multiples of
// 128, so the 8 channels one transpose8x8 block reads or writes fall in different L1 sets. At
// the plane's own stride a 32x32 map put all 8 rows 4 KiB apart, in one set, which cost the
// C = 32 backward a fifth of its time in cache misses.
inline int64_t staged_stride(int64_t plane) {
  const int64_t s = (plane + 15) / 16 * 16;
  return s % 128 == 0 ? s + 16 : s;
}

// Whether to stage a sample of n values in C channels: only with several channels, and only while
// it fits in L2 beside its tile. A 3×448² sample (2.4 MB) staged cost a whole extra trip to memory
// (fwd+bwd 127 -> 208 ms); its three channels are few enough streams to transpose in place.
template <typename T>
inline bool staged(int64_t channels, int64_t n) {
  return channels > 1 && n * static_cast<int64_t>(sizeof(T)) <= (int64_t(512) << 10);
}

// Writes one sample held channels-last in `rows` runs of `width` positions (run r starts at
// row_start(r)) to a channels-first (C, rows·width) sample at dst: through `staging` and one
// sequential write when the sample is staged (see `staged`), else transposed straight into dst.
template <typename acc_t, typename T, typename RowStart>
void store_channels_first(RowStart row_start, int64_t rows, int64_t width, int64_t C, T* dst,
                          std::vector<acc_t>& staging) {
  const int64_t plane = rows * width, stride = staged_stride(plane);
  const bool stage = staged<acc_t>(C, plane * C);
  if (stage) staging.resize(static_cast<size_t>(stride * C));
  for (int64_t r = 0; r < rows; ++r) {
    if (stage)
      transpose(row_start(r), C, 1, staging.data() + r * width, 1, stride, width, C);
    else
      transpose(row_start(r), C, 1, dst + r * width, 1, plane, width, C);
  }
  if (stage) copy_planes(staging.data(), stride, dst, plane, plane, C);
}

// The two x-neighbour taps of a point at tile offset o + corner[0] (corner[1] = corner[0] + 1 with
// one channel), read from the tile itself (Taps) or, for float, from its x-pairs (PairedTaps: one
// 8-byte load, which GCC vectorises as half as many gathered elements, each a pair).
template <typename acc_t>
struct XPair {
  acc_t lo, hi;
};

template <typename acc_t>
struct Taps {
  const acc_t* base;
  XPair<acc_t> x_pair(int32_t o, const int32_t* corner) const { return {base[o + corner[0]], base[o + corner[1]]}; }
};

struct PairedTaps {
  const uint64_t* pairs;  // pairs[i]: the floats at i (low half) and i + 1 (high half)
  XPair<float> x_pair(int32_t o, const int32_t* corner) const {
    const uint64_t q = pairs[o + corner[0]];
    return {stn::bit_cast<float>(static_cast<uint32_t>(q)), stn::bit_cast<float>(static_cast<uint32_t>(q >> 32))};
  }
};

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
  std::vector<acc_t> staging;  // one sample channels-first, between memory and the tile (see `staged`)

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

  std::array<int32_t, K> corners() const {
    std::array<int32_t, K> c;
    for (int k = 0; k < K; ++k) c[k] = corner[k];
    return c;
  }

  int64_t rows() const { return D == 2 ? in[1] : in[1] * in[D - 1]; }

  // Position of the first interior element of input row r (rows in (z, y) order).
  int64_t row_position(int64_t r) const {
    if constexpr (D == 2) return (r + 1) * stride[1] + 1;  // r < in[1]: no division
    const int64_t y = r % in[1], z = D == 3 ? r / in[1] : 0;
    return (y + 1) * stride[1] + (D == 3 ? (z + 1) * stride[D - 1] : 0) + 1;
  }

  // From one sample of a (C, [D,] H, W) input: staged if small (see `staged`), then transposed row by row.
  template <typename scalar_t>
  void load(const scalar_t* src) {
    const int64_t plane = rows() * in[0];
    if (staged<acc_t>(channels, plane * channels)) {
      const int64_t stride = staged_stride(plane);
      staging.resize(static_cast<size_t>(stride * channels));
      copy_planes(src, plane, staging.data(), stride, plane, channels);
      transpose_in(staging.data(), stride);
    } else {
      transpose_in(src, plane);
    }
  }

  // The interior, to one sample of a (C, [D,] H, W) tensor, staged like `load`.
  void store(acc_t* dst) {
    store_channels_first([&](int64_t r) { return data.data() + row_position(r) * channels; }, rows(), in[0], channels,
                         dst, staging);
  }

  // From channels-first rows, channel c at src + c * stride.
  template <typename S>
  void transpose_in(const S* src, int64_t stride) {
    for (int64_t r = 0; r < rows(); ++r)
      transpose(src + r * in[0], 1, stride, data.data() + row_position(r) * channels, channels, 1, in[0], channels);
  }

  void zero() { std::fill(data.begin(), data.end(), acc_t(0)); }

  // One sample of a one-channel input, for the one-channel kernels' reads (`reader`). For float, the
  // tile's x-pairs, pairs[i] = the floats at tile positions i and i + 1, written straight from the
  // sample (the tile itself stays unused); interpolate_row and accumulate_row then gather half as
  // many elements, each a pair. The border's pairs are zero from the first call on. For double, `load`.
  // (Loading the tile and then pairing it up was two passes: 256x1x60²->30² forward, 1 thread,
  // 0.62 -> 0.52 ms.)
  template <typename scalar_t>
  void load_one_channel(const scalar_t* src) {
    if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<scalar_t, float>) {
      if (pairs.size() != data.size()) pairs.assign(data.size(), 0);
      const int64_t w = in[0];
      if (w == 0) return;
      for (int64_t r = 0; r < rows(); ++r) {
        const float* __restrict__ s = src + r * w;
        uint64_t* __restrict__ q = pairs.data() + row_position(r) - 1;  // from the left border's pair
        q[0] = uint64_t(stn::bit_cast<uint32_t>(s[0])) << 32;
        for (int64_t x = 0; x + 1 < w; ++x)
          q[x + 1] = uint64_t(stn::bit_cast<uint32_t>(s[x])) | (uint64_t(stn::bit_cast<uint32_t>(s[x + 1])) << 32);
        q[w] = stn::bit_cast<uint32_t>(s[w - 1]);  // the right border's own pair, (0, 0), is never written
      }
    } else {
      load(src);
    }
  }

  // How the one-channel kernels read taps: float tiles through their pairs (see load_one_channel), double directly.
  auto reader() const {
    if constexpr (std::is_same_v<acc_t, float>) return PairedTaps{pairs.data()};
    else return Taps<acc_t>{data.data()};
  }
  std::vector<uint64_t> pairs;  // float, one channel: see load_one_channel
};

// The sampling points of a run of output rows: tile offset of tap 0 and fractional parts per axis.
// An absent point (outside the map or not finite) gets offset 0 (the tile's zero corner) and
// zero fractions, so it reads zero, and `present` 0, so it passes no gradient.
template <int D, typename acc_t>
struct RowTaps {
  std::vector<int32_t> offsets;
  std::vector<acc_t> values;  // frac for each axis, then present: D + 1 runs of `count`
  int32_t* off;
  acc_t* frac[D];
  acc_t* present;

  explicit RowTaps(int64_t count) : offsets(count), values((D + 1) * count) {
    off = offsets.data();
    for (int a = 0; a < D; ++a) frac[a] = values.data() + a * count;
    present = values.data() + D * count;
  }

  // Points p_a(j) = A[a][0] xs[j] + A[a][1] ys[j] [+ A[a][2] zs[j]] + B[a] in pixel units, for j <
  // count. Raw pointers in locals: loads of a std::vector's data pointer inside the loop kept it
  // from vectorising.
  void compute(const acc_t (*A)[D], const acc_t* B, const acc_t* __restrict__ xs, const acc_t* __restrict__ ys,
               const acc_t* __restrict__ zs, int64_t count, const PaddedTile<D, acc_t>& t) {
    acc_t m[D][D], b[D], limit[D];
    int32_t step[D];
    acc_t* __restrict__ fr[D];
    for (int a = 0; a < D; ++a) {
      for (int c = 0; c < D; ++c) m[a][c] = A[a][c];
      b[a] = B[a];
      limit[a] = acc_t(t.in[a]);
      step[a] = static_cast<int32_t>(t.stride[a] * t.channels);
      fr[a] = frac[a];
    }
    int32_t* __restrict__ o_out = off;
    acc_t* __restrict__ pr = present;
#pragma omp simd
    for (int64_t j = 0; j < count; ++j) {
      acc_t p[D];
      bool ok = true;
      for (int a = 0; a < D; ++a) {
        p[a] = m[a][0] * xs[j] + b[a];
        if constexpr (D > 1) p[a] += m[a][1] * ys[j];
        if constexpr (D > 2) p[a] += m[a][2] * zs[j];
        ok = ok & (p[a] >= acc_t(-1)) & (p[a] < limit[a]);  // false for NaN
      }
      int32_t o = 0;
      for (int a = 0; a < D; ++a) {
        const acc_t c = ok ? p[a] : acc_t(-1);
        const acc_t f = std::floor(c);
        fr[a][j] = c - f;
        o += (static_cast<int32_t>(f) + 1) * step[a];
      }
      o_out[j] = o;
      pr[j] = ok ? acc_t(1) : acc_t(0);
    }
  }

  void fractions(int64_t j, acc_t* f) const {
    for (int a = 0; a < D; ++a) f[a] = frac[a][j];
  }

  // The fractional parts as named pointers, for vectorised loops: read through an array of
  // pointers (or a struct's members), each is a pointer load in the loop, which GCC does not vectorise.
  const acc_t* fx() const { return frac[0]; }
  const acc_t* fy() const { return frac[D > 1 ? 1 : 0]; }
  const acc_t* fz() const { return frac[D - 1]; }
};

// f[a] = the fractional part of point j on axis a, from the run of each axis (see RowTaps::fx).
template <int D, typename acc_t>
inline void load_fractions(const acc_t* fx, const acc_t* fy, const acc_t* fz, int64_t j, acc_t* f) {
  f[0] = fx[j];
  if constexpr (D > 1) f[1] = fy[j];
  if constexpr (D > 2) f[2] = fz[j];
}

// Multilinear interpolation over axes [0, A), A >= 1, of the 2^A taps at o + corner[k] (bit a of k =
// upper neighbour on axis a), written as nested lerps on scalars: no tap array goes through
// memory, which kept the compiler's vectoriser from turning it into stalled partial stores and
// reloads. Taps are read by index (o + corner), not through a pointer: GCC vectorises the former
// into gathers and not the latter.
template <int A, typename acc_t, typename Reader>
inline acc_t lerp_taps(const Reader& taps, int32_t o, const int32_t* corner, const acc_t* f) {
  if constexpr (A == 1) {
    const XPair<acc_t> x = taps.x_pair(o, corner);
    return x.lo + f[0] * (x.hi - x.lo);
  } else {
    const acc_t lo = lerp_taps<A - 1>(taps, o, corner, f);
    const acc_t hi = lerp_taps<A - 1>(taps, o, corner + (1 << (A - 1)), f);
    return lo + f[A - 1] * (hi - lo);
  }
}

// d lerp_taps<A> / d f[a].
template <int A, typename acc_t, typename Reader>
inline acc_t lerp_taps_grad(const Reader& taps, int32_t o, const int32_t* corner, const acc_t* f, int a) {
  if constexpr (A == 1) {
    const XPair<acc_t> x = taps.x_pair(o, corner);
    return a == 0 ? x.hi - x.lo : acc_t(0);
  } else {
    constexpr int half = 1 << (A - 1);
    if (a == A - 1) return lerp_taps<A - 1>(taps, o, corner + half, f) - lerp_taps<A - 1>(taps, o, corner, f);
    const acc_t lo = lerp_taps_grad<A - 1>(taps, o, corner, f, a);
    const acc_t hi = lerp_taps_grad<A - 1>(taps, o, corner + half, f, a);
    return lo + f[A - 1] * (hi - lo);
  }
}

// dst[j] = the taps of point j interpolated, j < width, for one channel. Restrict-qualified
// parameters and no `omp simd` (whose private copy of f defeats it): GCC vectorises this loop
// with gathers (of x-pairs, for float: see PairedTaps).
template <int D, typename acc_t, typename out_t, typename Reader>
__attribute__((noinline)) void interpolate_row(Reader taps, const int32_t* __restrict__ off,
                            const acc_t* __restrict__ fx, const acc_t* __restrict__ fy, const acc_t* __restrict__ fz,
                            std::array<int32_t, 1 << D> corner, out_t* __restrict__ dst, int64_t width) {
  for (int64_t j = 0; j < width; ++j) {
    acc_t f[D];
    load_fractions<D>(fx, fy, fz, j, f);
    dst[j] = out_t(lerp_taps<D>(taps, off[j], corner.data(), f));
  }
}

// One chunk's share of dθ, for one channel, added to dtheta (D rows of D + 1). d_a(j) = grad[j] *
// d(interpolated value)/d(point j's coordinate on axis a) is what dθ is reduced from: p_a = scale_a
// (θ_a0 x + θ_a1 y [+ θ_a2 z] + θ_aD) + shift_a, so dθ_ab / scale_a = Σ over points of d_a times
// (x, y, [z,] 1)_b. The first loop writes d_a(j) to d[a count + j] (vectorised with gathers, like
// interpolate_row); the second reduces them per axis in vector registers (an `omp simd` reduction),
// once per chunk of a few hundred points. (Per-point lanes in memory, summed once per sample, cost a
// load and a store per sum and point. One loop for both vectorises in 2-D but not in 3-D.)
template <int D, typename acc_t, typename Reader>
__attribute__((noinline)) void accumulate_row(Reader taps, const int32_t* __restrict__ off,
                                              const acc_t* __restrict__ fx, const acc_t* __restrict__ fy,
                                              const acc_t* __restrict__ fz, std::array<int32_t, 1 << D> corner,
                                              const acc_t* __restrict__ grad, const acc_t* __restrict__ xs,
                                              const acc_t* __restrict__ ys, const acc_t* __restrict__ zs,
                                              acc_t* __restrict__ d, double (*dtheta)[D + 1], int64_t count) {
  acc_t* __restrict__ dy = d + (D > 1 ? count : 0);
  acc_t* __restrict__ dz = d + (D - 1) * count;
  for (int64_t j = 0; j < count; ++j) {
    acc_t f[D];
    load_fractions<D>(fx, fy, fz, j, f);
    d[j] = grad[j] * lerp_taps_grad<D>(taps, off[j], corner.data(), f, 0);
    if constexpr (D > 1) dy[j] = grad[j] * lerp_taps_grad<D>(taps, off[j], corner.data(), f, 1);
    if constexpr (D > 2) dz[j] = grad[j] * lerp_taps_grad<D>(taps, off[j], corner.data(), f, 2);
  }
  for (int a = 0; a < D; ++a) {
    const acc_t* __restrict__ da = d + a * count;
    acc_t along_x = acc_t(0), along_y = acc_t(0), along_z = acc_t(0), total = acc_t(0);
#pragma omp simd reduction(+ : along_x, along_y, along_z, total)
    for (int64_t j = 0; j < count; ++j) {
      along_x += da[j] * xs[j];
      if constexpr (D > 1) along_y += da[j] * ys[j];
      if constexpr (D > 2) along_z += da[j] * zs[j];
      total += da[j];
    }
    dtheta[a][0] += double(along_x);
    if constexpr (D > 1) dtheta[a][1] += double(along_y);
    if constexpr (D > 2) dtheta[a][2] += double(along_z);
    dtheta[a][D] += double(total);
  }
}

// Two adjacent values as one vector (GCC's vector extension), for one load, add and store.
template <typename T>
struct PairOf;
template <>
struct PairOf<float> {
  typedef float type __attribute__((vector_size(8)));
};
template <>
struct PairOf<double> {
  typedef double type __attribute__((vector_size(16)));
};

// d input from the first `count` points of a chunk, one channel: grad[j] times each tap's weight,
// added at the tap into the zero-bordered tile d (see scatter_points for the order: `ways`). The
// taps 2m and 2m + 1 of a point are x-neighbours, adjacent in the tile: one 2-wide add each. Its own
// function, with restrict-qualified pointers and the corners as values, so that the loop keeps them
// in registers (inside the backward's lambda it reloaded them from the stack around every store:
// 256x1x60²->30² backward for d input alone, 1 thread, 0.76 -> 0.61 ms).
template <int D, typename acc_t>
__attribute__((noinline)) void scatter_one_channel(const int32_t* __restrict__ off, const acc_t* __restrict__ fx,
                                                   const acc_t* __restrict__ fy, const acc_t* __restrict__ fz,
                                                   const acc_t* __restrict__ grad, std::array<int32_t, 1 << D> corner,
                                                   acc_t* __restrict__ d, int64_t count, int64_t ways) {
  using Pair = typename PairOf<acc_t>::type;
  for (int64_t first = 0; first < ways; ++first)
    for (int64_t j = first; j < count; j += ways) {
      acc_t f[D];
      load_fractions<D>(fx, fy, fz, j, f);
      const Pair x_weights = Pair{acc_t(1) - f[0], f[0]} * grad[j];
      acc_t* at = d + off[j];
      for (int m = 0; m < (1 << (D - 1)); ++m) {
        acc_t s = acc_t(1);
        for (int a = 1; a < D; ++a) s *= ((m >> (a - 1)) & 1) ? f[a] : acc_t(1) - f[a];
        Pair v;
        std::memcpy(&v, at + corner[2 * m], sizeof v);
        v += x_weights * s;
        std::memcpy(at + corner[2 * m], &v, sizeof v);
      }
    }
}

// Kernel weight of tap k (bit a of k = upper neighbour on axis a), of every tap, and their
// derivatives in f[a].
template <int D, typename acc_t>
inline acc_t corner_weight(int k, const acc_t* f) {
  acc_t w = acc_t(1);
  for (int a = 0; a < D; ++a) w *= ((k >> a) & 1) ? f[a] : acc_t(1) - f[a];
  return w;
}

template <int D, typename acc_t>
inline void tap_weights(const acc_t* f, acc_t* w) {
  for (int k = 0; k < (1 << D); ++k) w[k] = corner_weight<D, acc_t>(k, f);
}

template <int D, typename acc_t>
inline void tap_weight_grads(const acc_t* f, acc_t (*dw)[1 << D]) {
  for (int a = 0; a < D; ++a)
    for (int k = 0; k < (1 << D); ++k) {
      dw[a][k] = ((k >> a) & 1) ? acc_t(1) : acc_t(-1);
      for (int b = 0; b < D; ++b)
        if (b != a) dw[a][k] *= ((k >> b) & 1) ? f[b] : acc_t(1) - f[b];
    }
}

// One call's geometry: the output rows with their target coordinates, the affine map of each
// sample's θ (kept in the op-math type) to pixels, and the sizes both directions loop over.
// Rows are taken `chunk_rows` at a time, as one run of points: with C = 1 a row of 30 or 42 points
// spent about as much on starting and ending its vector loops as on its points (256x1x60²->30²:
// forward+backward ops 0.87 -> 0.74 ms with chunks of 9 rows; 512-point chunks were slower, their
// lanes outgrowing L1). With C > 1 the loops run over channels and a chunk is one row.
template <int D, typename scalar_t>
struct RowMap {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int64_t kChunkPoints = 256;  // C = 1: the fewest points a chunk of whole rows holds
  AffineAxes<D, acc_t> axes;
  std::vector<double> target[D];  // normalised target coordinates per output axis
  std::vector<acc_t> xt;          // target[0] in acc_t
  int64_t rows = 1;               // output rows per sample (H', or D'·H')
  int64_t width;                  // points per row (W')
  int64_t points;                 // output points per sample
  int64_t chunk_rows;             // rows per chunk
  int64_t sample_numel;           // input elements per sample
  std::vector<acc_t> xs;          // xt, chunk_rows times over
  at::Tensor theta_acc;
  const acc_t* theta_data;  // theta_acc.s data, (N, D, D+1)

  RowMap(const at::Tensor& input, const at::Tensor& theta, at::IntArrayRef out_size, bool align_corners,
         bool chunked)
      : axes(input, out_size, align_corners), theta_acc(theta.to(at::toOpMathType(theta.scalar_type()))) {
    for (int a = 0; a < D; ++a) {
      target[a].resize(axes.out[a]);
      for (int64_t i = 0; i < axes.out[a]; ++i) target[a][i] = target_coord(i, axes.out[a], align_corners);
      if (a > 0) rows *= axes.out[a];
    }
    xt.assign(target[0].begin(), target[0].end());
    width = axes.out[0];
    points = width * rows;
    chunk_rows = chunked ? std::min(rows, (kChunkPoints + width - 1) / width) : 1;
    for (int64_t r = 0; r < chunk_rows; ++r) xs.insert(xs.end(), xt.begin(), xt.end());
    sample_numel = input.numel() / std::max<int64_t>(input.size(0), 1);
    theta_data = theta_acc.const_data_ptr<acc_t>();
  }

  // Normalised target coordinates (x unused) of output row r.
  void row_coords(int64_t r, double* t) const {
    t[0] = 0.0;
    t[1] = target[1][r % axes.out[1]];
    if (D == 3) t[2] = target[D - 1][r / axes.out[1]];
  }

  // How many points apart C = 1's backward scatters in one pass (see scatter_points): enough that
  // they lie 2 input pixels apart along the row (a pair of x taps spans 2), at least 4 (faster than
  // 2 even where 2 would do: gi-only backward 0.40 vs 0.43 ms at 256x1x42²), at most 16.
  int64_t scatter_ways(int64_t n) const {
    if (width < 2) return 2;
    double step = 0.0;  // input pixels from one output column to the next
    for (int a = 0; a < D; ++a)
      step = std::max(step, std::abs(double(theta_data[(n * D + a) * (D + 1)]) * double(axes.scale[a])) *
                                (target[0][1] - target[0][0]));
    return step >= 0.5 ? 4 : std::min<int64_t>(16, static_cast<int64_t>(std::ceil(2.0 / step)));
  }

  // Rows [r0, r0 + count) of sample n, count <= chunk_rows: the y (and z) of each point into
  // ys (zs), count·W long, and the taps of every point in `tile`'s geometry.
  void chunk(int64_t n, int64_t r0, int64_t count, acc_t* ys, acc_t* zs, RowTaps<D, acc_t>& taps,
             const PaddedTile<D, acc_t>& tile) const {
    for (int64_t r = 0; r < count; ++r) {
      double t[3];
      row_coords(r0 + r, t);
      std::fill_n(ys + r * width, width, acc_t(t[1]));
      if (D == 3) std::fill_n(zs + r * width, width, acc_t(t[D - 1]));
    }
    acc_t A[D][D], B[D];
    for (int a = 0; a < D; ++a) {  // p_a = scale_a (θ_a0 x + θ_a1 y [+ θ_a2 z] + θ_aD) + shift_a
      const acc_t* row = theta_data + (n * D + a) * (D + 1);
      for (int b = 0; b < D; ++b) A[a][b] = row[b] * axes.scale[a];
      B[a] = acc_t(double(row[D]) * double(axes.scale[a]) + double(axes.shift[a]));
    }
    taps.compute(A, B, xs.data(), ys, zs, count * width, tile);
  }
};

// FIXED_C is the channel count when known at compile time (1), else 0: single-channel maps, the
// common case, get loops without a channel dimension.
template <int D, typename scalar_t, int FIXED_C>
void forward_kernel(const at::Tensor& input, const at::Tensor& theta, at::Tensor& out, at::IntArrayRef out_size,
                    bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = 1 << D;
  const RowMap<D, scalar_t> map(input, theta, out_size, align_corners, FIXED_C == 1);
  const int64_t N = input.size(0), C = FIXED_C ? FIXED_C : input.size(1);
  const int64_t W = map.width, P = map.points, S = map.sample_numel, R = map.chunk_rows;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    PaddedTile<D, acc_t> tile(map.axes.in, C);
    RowTaps<D, acc_t> taps(R * W);
    std::vector<acc_t> coords(2 * R * W);                 // y and z of each point of a chunk
    std::vector<acc_t> sample(FIXED_C == 1 ? 0 : P * C);  // C > 1: one output sample, channels last
    std::vector<acc_t> staging;                           // and channels first, for one sequential write
    for (int64_t n = begin; n < end; ++n) {
      if constexpr (FIXED_C == 1) tile.load_one_channel(in + n * S);
      else tile.load(in + n * S);
      for (int64_t r0 = 0; r0 < map.rows; r0 += R) {
        const int64_t count = std::min(R, map.rows - r0);
        map.chunk(n, r0, count, coords.data(), coords.data() + R * W, taps, tile);
        if constexpr (FIXED_C == 1) {  // interpolate the taps straight into the output rows
          interpolate_row<D, acc_t>(tile.reader(), taps.off, taps.fx(), taps.fy(), taps.fz(), tile.corners(),
                                    o + n * P + r0 * W, count * W);
          continue;
        }
        const int64_t r = r0;  // C > 1: one row
        for (int64_t j = 0; j < W; ++j) {
          acc_t f[D], w[K];
          taps.fractions(j, f);
          tap_weights<D, acc_t>(f, w);
          const acc_t* src = tile.data.data() + taps.off[j];
          acc_t* dst = sample.data() + (r * W + j) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            acc_t v = acc_t(0);
            for (int k = 0; k < K; ++k) v += w[k] * src[tile.corner[k] + c];
            dst[c] = v;
          }
        }
      }
      if constexpr (FIXED_C != 1)
        store_channels_first([&](int64_t) { return sample.data(); }, 1, P, C, o + n * C * P, staging);
    }
  });
}

template <int D, typename scalar_t, int FIXED_C, bool INPUT_GRAD, bool THETA_GRAD>
void backward_kernel(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& theta, at::Tensor* gi,
                     at::Tensor* gt, at::IntArrayRef out_size, bool align_corners) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = 1 << D;
  const RowMap<D, scalar_t> map(input, theta, out_size, align_corners, FIXED_C == 1);
  const int64_t N = input.size(0), C = FIXED_C ? FIXED_C : input.size(1);
  const int64_t W = map.width, P = map.points, S = map.sample_numel, R = map.chunk_rows;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  acc_t* gin = INPUT_GRAD ? gi->mutable_data_ptr<acc_t>() : nullptr;
  acc_t* gth = THETA_GRAD ? gt->mutable_data_ptr<acc_t>() : nullptr;

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    PaddedTile<D, acc_t> tile(map.axes.in, THETA_GRAD ? C : 0);
    PaddedTile<D, acc_t> dtile(map.axes.in, INPUT_GRAD ? C : 0);
    const PaddedTile<D, acc_t>& geometry = THETA_GRAD ? tile : dtile;
    RowTaps<D, acc_t> taps(R * W);
    std::vector<acc_t> coords(2 * R * W);  // y and z of each point of a chunk
    const bool stage = staged<acc_t>(C, P * C);
    const int64_t stride = staged_stride(P);
    std::vector<acc_t> grad_sample(stage ? stride * C : 0);  // dL/d output of one sample, staged (see `staged`)
    std::vector<acc_t> grad_row(R * W * C);  // one chunk of it, zero at absent points
    std::vector<acc_t> dpoint(FIXED_C == 1 ? D * R * W : 0);  // C = 1: accumulate_row's scratch
    std::vector<acc_t> channel_sums(2 * D * C);  // C > 1: per-channel partial sums for dθ
    // d input from point j of the current chunk: its C gradients times each tap's weight, added at
    // the tap. With C > 1 called from the same pass over the row as dθ, while the point's taps are
    // in registers.
    const auto scatter = [&](int64_t j) {
      acc_t f[D], w[K];
      taps.fractions(j, f);
      tap_weights<D, acc_t>(f, w);
      const acc_t* gr = grad_row.data() + j * C;
      acc_t* d = dtile.data.data() + taps.off[j];
      if constexpr (FIXED_C == 1) {  // taps k and k+1 are x-neighbours, adjacent in the tile: one 2-wide add
        using Pair = typename PairOf<acc_t>::type;
        for (int k = 0; k < K; k += 2) {
          Pair v;
          std::memcpy(&v, d + dtile.corner[k], sizeof v);
          v += Pair{w[k], w[k + 1]} * gr[0];
          std::memcpy(d + dtile.corner[k], &v, sizeof v);
        }
        return;
      }
      for (int k = 0; k < K; ++k) {
        acc_t* dk = d + dtile.corner[k];
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dk[c] += w[k] * gr[c];
      }
    };
    // The first `count` points, every `ways`-th from 0, then from 1, ... Neighbouring points share
    // taps (point j's upper x tap is point j+1's lower one), so in order each addition waited on
    // the store before it; two apart they mostly do not overlap and run side by side (C = 1
    // backward 10-15% faster). With C = 1 the pairs of x taps are added as one 2-wide value, and
    // a pair that partly overlaps one stored just before cannot be forwarded from the store (at a
    // zoom of 0.25 the backward ran twice as long): `ways` keeps points that far apart (scatter_ways).
    const auto scatter_points = [&](int64_t count, int64_t ways) {
      if constexpr (FIXED_C == 1)
        return scatter_one_channel<D, acc_t>(taps.off, taps.fx(), taps.fy(), taps.fz(), grad_row.data(),
                                             dtile.corners(), dtile.data.data(), count, ways);
      for (int64_t first = 0; first < ways; ++first)
        for (int64_t j = first; j < count; j += ways) scatter(j);
    };
    for (int64_t n = begin; n < end; ++n) {
      if (THETA_GRAD && FIXED_C == 1) tile.load_one_channel(in + n * S);
      else if (THETA_GRAD) tile.load(in + n * S);
      if (INPUT_GRAD) dtile.zero();
      double dtheta[D][D + 1] = {};
      const int64_t ways = FIXED_C == 1 ? map.scatter_ways(n) : 2;
      if (stage) copy_planes(go + n * C * P, P, grad_sample.data(), stride, P, C);
      for (int64_t r0 = 0; r0 < map.rows; r0 += R) {
        const int64_t count = std::min(R, map.rows - r0), L = count * W;
        const acc_t *ys = coords.data(), *zs = coords.data() + R * W;
        map.chunk(n, r0, count, coords.data(), coords.data() + R * W, taps, geometry);
        if (FIXED_C == 1) {  // relayout's plain-run case
          relayout(go + n * P + r0 * W, 1, P, grad_row.data(), 1, 1, L, 1,
                   [&](scalar_t v, int64_t j) { return acc_t(v) * taps.present[j]; });
        } else {  // one row (R = 1), transposed, then zero at absent points
          const int64_t r = r0;
          if (stage) transpose(grad_sample.data() + r * W, 1, stride, grad_row.data(), C, 1, W, C);
          else transpose(go + n * C * P + r * W, 1, P, grad_row.data(), C, 1, W, C);
          for (int64_t j = 0; j < W; ++j)
            if (taps.present[j] == acc_t(0)) std::fill_n(grad_row.data() + j * C, C, acc_t(0));
        }
        if (THETA_GRAD) {
          // Σ_j dL/dp_a(j) · x_j and Σ_j dL/dp_a(j) along the row, per source axis a
          if constexpr (FIXED_C == 1) {
            accumulate_row<D, acc_t>(tile.reader(), taps.off, taps.fx(), taps.fy(), taps.fz(), tile.corners(),
                              grad_row.data(), map.xs.data(), ys, zs, dpoint.data(), dtheta, L);
            if (INPUT_GRAD) scatter_points(L, ways);
          } else {
            double t[3];
            map.row_coords(r0, t);
            // Vector accumulators over channels, reduced once per row (no reduction per point).
            std::fill(channel_sums.begin(), channel_sums.end(), acc_t(0));
            for (int64_t j = 0; j < W; ++j) {
              acc_t f[D], dw[D][K];
              taps.fractions(j, f);
              tap_weight_grads<D, acc_t>(f, dw);
              const acc_t* src = tile.data.data() + taps.off[j];
              const acc_t* gr = grad_row.data() + j * C;
              const acc_t x = map.xt[j];
              for (int a = 0; a < D; ++a) {
                acc_t* __restrict__ along_c = channel_sums.data() + 2 * a * C;
                acc_t* __restrict__ total_c = along_c + C;
#pragma omp simd
                for (int64_t c = 0; c < C; ++c) {
                  acc_t d = acc_t(0);
                  for (int k = 0; k < K; ++k) d += dw[a][k] * src[tile.corner[k] + c];
                  d *= gr[c];
                  along_c[c] += x * d;
                  total_c[c] += d;
                }
              }
              if (INPUT_GRAD) scatter(j);
            }
            // p_a = scale_a * (θ_a0 x + θ_a1 y [+ θ_a2 z] + θ_aD) + shift_a, with y, z fixed along the row.
            for (int a = 0; a < D; ++a) {
              acc_t along = acc_t(0), total = acc_t(0);
              for (int64_t c = 0; c < C; ++c) {
                along += channel_sums[2 * a * C + c];
                total += channel_sums[(2 * a + 1) * C + c];
              }
              dtheta[a][0] += double(along);
              for (int b = 1; b < D; ++b) dtheta[a][b] += double(total) * t[b];
              dtheta[a][D] += double(total);
            }
          }
        }
        if (INPUT_GRAD && !THETA_GRAD) scatter_points(L, ways);
      }
      if (INPUT_GRAD) dtile.store(gin + n * S);
      if (THETA_GRAD)
        for (int a = 0; a < D; ++a)
          for (int b = 0; b <= D; ++b) gth[(n * D + a) * (D + 1) + b] = acc_t(dtheta[a][b] * double(map.axes.scale[a]));
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

// Below kSplitChannels channels, an (N, C, ...) input runs as N·C one-channel samples (θ repeated per
// channel, its gradient summed back): the one-channel kernels are vectorised over points, the multi-channel
// ones over channels, where C < 8 leaves most vector lanes idle. Measured (1 thread, fwd+bwd with both
// gradients): 64x2x42² 2.54 -> 1.08 ms, 64x6x42² 5.30 -> 3.31 ms, 8x4x24³ 7.03 -> 3.27 ms; at C = 8 the
// multi-channel kernel is the faster.
constexpr int64_t kSplitChannels = 8;

bool split_channels(const at::Tensor& input) { return input.size(1) > 1 && input.size(1) < kSplitChannels; }

// (N, C, ...) -> (N·C, 1, ...), a view where the tensor is contiguous
at::Tensor one_channel(const at::Tensor& t) {
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes[0] *= sizes[1];
  sizes[1] = 1;
  return t.contiguous().view(sizes);
}

at::Tensor affine_sample_forward_cpu(const at::Tensor& input, const at::Tensor& theta, at::IntArrayRef out_size,
                                     bool align_corners) {
  check_affine_sample_args(input, theta, out_size);
  if (!split_channels(input)) return affine_sample_forward_impl<Forward>(input, theta, out_size, align_corners);
  const int64_t c = input.size(1);
  const at::Tensor out = affine_sample_forward_impl<Forward>(one_channel(input), theta.repeat_interleave(c, 0),
                                                             out_size, align_corners);
  return out.view(affine_output_shape(input, out_size));
}

std::tuple<at::Tensor, at::Tensor> affine_sample_backward_cpu(const at::Tensor& grad_out, const at::Tensor& input,
                                                              const at::Tensor& theta, at::IntArrayRef out_size,
                                                              bool align_corners, bool input_grad, bool theta_grad) {
  check_affine_sample_args(input, theta, out_size);
  if (!split_channels(input) || grad_out.sizes() != at::IntArrayRef(affine_output_shape(input, out_size))) {
    return affine_sample_backward_impl<Backward>(grad_out, input, theta, out_size, align_corners, input_grad, theta_grad);
  }
  const int64_t c = input.size(1);
  auto [gi, gt] = affine_sample_backward_impl<Backward>(one_channel(grad_out), one_channel(input),
                                                        theta.repeat_interleave(c, 0), out_size, align_corners,
                                                        input_grad, theta_grad);
  if (input_grad) gi = gi.view(input.sizes());
  if (theta_grad) {
    std::vector<int64_t> per_channel = theta.sizes().vec();
    per_channel.insert(per_channel.begin() + 1, c);
    gt = gt.view(per_channel).sum(1);
  }
  return {gi, gt};
}

}  // namespace

TORCH_LIBRARY_IMPL(stn, CPU, m) {
  m.impl("affine_sample_forward", &affine_sample_forward_cpu);
  m.impl("affine_sample_backward", &affine_sample_backward_cpu);
}

}  // namespace stn
