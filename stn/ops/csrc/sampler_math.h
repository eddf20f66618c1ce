// Per-point sampling math shared by the CPU and CUDA kernels (paper eqs. 3-7 and 9).
//
// A sample point arrives in grid order (x, y[, z]) and normalised coordinates; `unnormalize`
// turns it into pixel units. Linear sampling (bilinear in 2-D, trilinear in 3-D) reads the 2^D
// corners around the point; corners outside the map carry a zero mask (zero padding).
// A point whose coordinate is not finite, or lies so far out that no corner is inside, is
// "absent": zero output and zero gradients, identically on every implementation.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define STN_HD __host__ __device__ __forceinline__
#else
#define STN_HD inline
#endif

namespace stn {

enum Mode : int64_t { kBilinear = 0, kNearest = 1 };

STN_HD float floor_(float v) { return floorf(v); }
STN_HD double floor_(double v) { return ::floor(v); }
STN_HD float round_even(float v) { return nearbyintf(v); }
STN_HD double round_even(double v) { return ::nearbyint(v); }

// Same operation order as PyTorch's grid_sampler_unnormalize, so results agree to rounding.
template <typename acc_t>
STN_HD acc_t unnormalize(acc_t coord, int64_t size, bool align_corners) {
  return align_corners ? ((coord + acc_t(1)) / acc_t(2)) * acc_t(size - 1)
                       : ((coord + acc_t(1)) * acc_t(size) - acc_t(1)) / acc_t(2);
}

// Normalised coordinate of point i of the regular target grid G along an axis of `size` points
// (pixel centres over the map's bounds, or corners with align_corners), as stn.transforms builds it.
STN_HD double target_coord(int64_t i, int64_t size, bool align_corners) {
  if (align_corners) return size == 1 ? 0.0 : -1.0 + 2.0 * double(i) / double(size - 1);
  return (2.0 * double(i) + 1.0) / double(size) - 1.0;
}

// d(pixel coordinate) / d(normalised coordinate).
template <typename acc_t>
STN_HD acc_t unnormalize_scale(int64_t size, bool align_corners) {
  return align_corners ? acc_t(size - 1) / acc_t(2) : acc_t(size) / acc_t(2);
}

// Sizes and element strides of one map, per axis in grid order (x, y, z). GPU kernels use 32-bit
// indices inside one map (64-bit integer arithmetic is emulated there); the CPU uses 64-bit.
template <int D, typename index_t = int64_t>
struct Geometry {
  index_t size[D];
  index_t stride[D];
};

// Spatial sizes (.., D, H, W) -> Geometry in (x, y, z) order for a contiguous map.
template <int D, typename index_t = int64_t>
inline Geometry<D, index_t> geometry_from_sizes(const int64_t* spatial) {
  Geometry<D, index_t> g;
  int64_t stride = 1;
  for (int a = 0; a < D; ++a) {
    g.size[a] = static_cast<index_t>(spatial[D - 1 - a]);
    g.stride[a] = static_cast<index_t>(stride);
    stride *= spatial[D - 1 - a];
  }
  return g;
}

// The 2^D corners of a linear (bi-/tri-linear) kernel around one point. Corner k takes the
// upper neighbour on axis a when bit a of k is set.
template <int D, typename acc_t, typename index_t = int64_t>
struct LinearTaps {
  static constexpr int K = 1 << D;
  index_t offset[K];  // element offset of each corner inside the map (0 when outside)
  acc_t mask[K];      // 1 inside the map, 0 outside
  acc_t weight[K];    // kernel weight, already masked
  acc_t frac[D];

  // An absent point: every corner masked out, so it reads zero and receives no gradient.
  STN_HD void clear() {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      offset[k] = 0;
      mask[k] = weight[k] = acc_t(0);
    }
#pragma unroll
    for (int a = 0; a < D; ++a) frac[a] = acc_t(0);
  }

  // False (and cleared) when the point is absent (not finite, or every corner outside).
  STN_HD bool init(const acc_t* p, const Geometry<D, index_t>& g) {
    index_t base[D];
#pragma unroll
    for (int a = 0; a < D; ++a) {
      if (!(p[a] >= acc_t(-1) && p[a] < acc_t(g.size[a]))) {
        clear();
        return false;
      }
      const acc_t f = floor_(p[a]);
      base[a] = static_cast<index_t>(f);
      frac[a] = p[a] - f;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      index_t off = 0;
      bool inside = true;
      acc_t w = acc_t(1);
#pragma unroll
      for (int a = 0; a < D; ++a) {
        const int bit = (k >> a) & 1;
        const index_t i = base[a] + bit;
        inside = inside && i >= 0 && i < g.size[a];
        off += i * g.stride[a];
        w *= bit ? frac[a] : acc_t(1) - frac[a];
      }
      offset[k] = inside ? off : 0;
      mask[k] = inside ? acc_t(1) : acc_t(0);
      weight[k] = w * mask[k];
    }
    return true;
  }

  // d weight[k] / d p[a] (eq. 7), including the mask.
  STN_HD acc_t dweight(int k, int a) const {
    acc_t w = ((k >> a) & 1) ? acc_t(1) : acc_t(-1);
#pragma unroll
    for (int b = 0; b < D; ++b) {
      if (b != a) w *= ((k >> b) & 1) ? frac[b] : acc_t(1) - frac[b];
    }
    return w * mask[k];
  }
};

// Nearest-neighbour tap (eq. 4, ties rounded to even as grid_sample does). False when absent.
template <int D, typename acc_t, typename index_t>
STN_HD bool nearest_offset(const acc_t* p, const Geometry<D, index_t>& g, index_t* offset) {
  index_t off = 0;
#pragma unroll
  for (int a = 0; a < D; ++a) {
    const acc_t r = round_even(p[a]);
    if (!(r >= acc_t(0) && r <= acc_t(g.size[a] - 1))) return false;
    off += static_cast<index_t>(r) * g.stride[a];
  }
  *offset = off;
  return true;
}

}  // namespace stn
