// C++ CPU kernel of stn::fold: col2im (F.fold, stride 1, no dilation) of a convolution's columns into a map in
// float32 or wider, the last step of InputGradConv2d's input gradient (stn/models/conv.py).
//
// ATen's path there is columns.to(float32) then F.fold: a conversion pass over the bf16 columns and a scatter loop
// (each column row added into the map in turn), 2-4 ms a step on R's ST-CNN (32 × 81 × 20² columns per chunk).
// Here each output row is gathered in registers from the column rows that reach it, converting as it reads.
// The values are F.fold's bit for bit: ATen zeroes the map and adds column row c·k_h·k_w + k_y·k_w + k_x for
// ascending (k_y, k_x), so every output element is the same sum in the same order, starting from zero.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "bits.h"

namespace stn {
namespace {

template <typename T>
struct Accumulate {
  using type = std::conditional_t<std::is_same_v<T, double>, double, float>;
  static type read(T v) { return static_cast<type>(v); }
};
template <>
struct Accumulate<c10::BFloat16> {  // the bits shifted into a float's high half, which vectorises
  using type = float;
  static float read(c10::BFloat16 v) { return stn::bit_cast<float>(static_cast<uint32_t>(v.x) << 16); }
};

// acc[x] += col[x + shift] for the x of [0, width) whose column index x + shift lies in [0, cols)
template <typename T, typename A>
inline void add_row(const T* __restrict__ col, int64_t cols, int64_t shift, int64_t width, A* __restrict__ acc) {
  const int64_t begin = std::max<int64_t>(0, -shift), end = std::min<int64_t>(width, cols - shift);
  for (int64_t x = begin; x < end; ++x) acc[x] += Accumulate<T>::read(col[x + shift]);
}

at::Tensor fold_cpu(const at::Tensor& columns, at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                    at::IntArrayRef padding) {
  TORCH_CHECK(columns.dim() == 3 && output_size.size() == 2 && kernel_size.size() == 2 && padding.size() == 2,
              "stn::fold: columns must be (N, C·kh·kw, L) with 2 output sizes, kernel sizes and paddings; got columns ",
              columns.sizes());
  const int64_t H = output_size[0], W = output_size[1], KH = kernel_size[0], KW = kernel_size[1];
  const int64_t PH = padding[0], PW = padding[1];
  const int64_t OH = H + 2 * PH - KH + 1, OW = W + 2 * PW - KW + 1;
  TORCH_CHECK(KH > 0 && KW > 0 && PH >= 0 && PW >= 0 && OH > 0 && OW > 0 && columns.size(1) % (KH * KW) == 0 &&
                  columns.size(2) == OH * OW,
              "stn::fold: columns ", columns.sizes(), " do not fit a ", H, "x", W, " map, kernel ", KH, "x", KW,
              ", padding ", PH, "x", PW);
  const at::Tensor cols = columns.contiguous();
  const int64_t N = cols.size(0), C = cols.size(1) / (KH * KW);
  const auto out_type = c10::promoteTypes(cols.scalar_type(), at::kFloat);
  at::Tensor out = at::empty({N, C, H, W}, cols.options().dtype(out_type));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, cols.scalar_type(), "stn::fold", [&] {
    using A = typename Accumulate<scalar_t>::type;
    TORCH_INTERNAL_ASSERT(out.scalar_type() == c10::CppTypeToScalarType<A>::value);
    const scalar_t* cp = cols.const_data_ptr<scalar_t>();
    A* op = out.mutable_data_ptr<A>();
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {  // (n, c): its columns are KH·KW consecutive rows
        const scalar_t* pc = cp + plane * KH * KW * OH * OW;
        for (int64_t y = 0; y < H; ++y) {
          A* acc = op + (plane * H + y) * W;
          std::fill_n(acc, W, A(0));
          for (int64_t ky = 0; ky < KH; ++ky) {
            const int64_t h = y + PH - ky;  // the column position whose tap ky lands on row y
            if (h < 0 || h >= OH) continue;
            for (int64_t kx = 0; kx < KW; ++kx)
              add_row(pc + (ky * KW + kx) * OH * OW + h * OW, OW, PW - kx, W, acc);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(stn, CPU, m) { m.impl("fold", &fold_cpu); }

}  // namespace stn
