// C++ CPU kernel of stn::relu_max_pool2d_*: ReLU followed by 2×2 max pooling (stride 2, no padding, floor),
// the pair after each convolution of the paper's CNNs, in one pass.
//
// ATen runs the pair as three passes over the convolution's output (ReLU in place; max pooling; in the backward a
// zeroed gradient, the pool's scatter, then ReLU's mask), each reading or writing the full-size map: on a TC CNN
// (64 × 39 × 52² bf16) they were 25-39 ms of a ~120 ms step in profiles on an AMD EPYC. Here the forward reads the
// map once and writes the pooled output and one byte per output (which of the four inputs won, or 4: none, the
// maximum was not positive); the backward writes each gradient element once. Values and gradients are ATen's bit
// for bit: max(relu(a), ..) = relu(max(a, ..)); the first maximum of a window wins (ATen's `>` scan), and the
// gradient reaches it only where the maximum is positive (ReLU's mask), or NaN (which ReLU and the pool propagate).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>


namespace stn {
namespace {

constexpr uint8_t kNone = 4;  // window index of an output whose gradient is zero

// The kernels work on each element's bits as a signed integer (int16 for bf16, int32 for float, int64 for
// double): for IEEE numbers, positive values order as their bits do and every negative one has a negative bit
// pattern, so relu(max(a, b, c, d)) is max(0, a, b, c, d) in integers, which vectorises (comparing floats and
// selecting bits did not: gcc left that loop scalar, 4x slower than ATen's pool). A positive NaN is the
// largest and propagates as ATen's ReLU and pool do; a NaN with its sign bit set would read as negative.
// `pair`: two adjacent elements as one unsigned word, for unpool_pairs (none for double: no 128-bit lanes).
template <typename T>
struct Bits;
template <>
struct Bits<float> {
  using type = int32_t;
  using pair = uint64_t;
};
template <>
struct Bits<double> {
  using type = int64_t;
  using pair = void;
};
template <>
struct Bits<c10::BFloat16> {
  using type = int16_t;
  using pair = uint32_t;
};

// Outputs [0, count) from four input streams (the window's top-left, top-right, bottom-left, bottom-right, at
// STEP elements between consecutive outputs), and which input won: the first whose bits are the output's (ATen's
// scan: a later input wins only if greater), or kNone where the output is zero (ReLU: no input gets a gradient).
template <typename bits, int STEP>
inline void pool_run(const bits* __restrict__ a, const bits* __restrict__ b, const bits* __restrict__ c,
                     const bits* __restrict__ d, int64_t count, bits* __restrict__ out, uint8_t* __restrict__ which) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i * STEP;
    out[i] = std::max(std::max(std::max(a[j], b[j]), std::max(c[j], d[j])), bits(0));
  }
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i * STEP;
    const bits o = out[i];
    const uint8_t k = o == a[j] ? 0 : o == b[j] ? 1 : o == c[j] ? 2 : 3;
    which[i] = o > 0 ? k : kNone;
  }
}

// The gradient of `count` windows: each output's gradient to the input that won, zero to the other three.
template <typename bits, int STEP>
inline void unpool_run(const bits* __restrict__ grad, const uint8_t* __restrict__ which, int64_t count,
                       bits* __restrict__ a, bits* __restrict__ b, bits* __restrict__ c, bits* __restrict__ d) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i * STEP;
    const bits v = grad[i];
    const uint8_t k = which[i];
    a[j] = k == 0 ? v : bits(0);
    b[j] = k == 1 ? v : bits(0);
    c[j] = k == 2 ? v : bits(0);
    d[j] = k == 3 ? v : bits(0);
  }
}

// unpool_run for channels-first rows (STEP 2), writing each window's two adjacent elements of a row as one
// unsigned word (the element at the lower address in the low half) instead of four stride-2 streams, which GCC
// vectorised with scatters (the NCHW backward took twice ATen's time): 3.3x faster on 100 x 39 x 52² (bf16 and
// float, a standalone loop over the rows).
template <typename bits, typename pair>
inline void unpool_pairs(const bits* __restrict__ grad, const uint8_t* __restrict__ which, int64_t count,
                         bits* __restrict__ top, bits* __restrict__ bottom) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "unpool_pairs puts the lower address in the low half");
  constexpr int shift = 8 * sizeof(bits);
  for (int64_t i = 0; i < count; ++i) {
    const pair v = static_cast<std::make_unsigned_t<bits>>(grad[i]);
    const uint8_t k = which[i];
    const pair hi = pair(v << shift);  // masks, not selects: with `?:` GCC saw control flow and stayed scalar
    const pair t = (v & (pair(0) - pair(k == 0))) | (hi & (pair(0) - pair(k == 1)));
    const pair b = (v & (pair(0) - pair(k == 2))) | (hi & (pair(0) - pair(k == 3)));
    std::memcpy(top + 2 * i, &t, sizeof t);
    std::memcpy(bottom + 2 * i, &b, sizeof b);
  }
}

// Calls f(count, offset, C) for runs of `count` channels starting at `offset` that together cover a channels-last
// window's C channels, `count` a compile-time constant (std::integral_constant) wherever possible, and C too where
// one run covers them all (a constant stride between a window's inputs saved 10% more): a runtime count
// left GCC's vector loop partly or wholly idle (C = 8 or 20: the fused op took 1.4x ATen's pair on SEQ128's
// 32 x 8 x 128² and the TC ST-CNN localiser's 64 x 20 x 26² maps; C = 46, Table 1's CNNs: 7x slower forward than
// C = 32). The default run's small counts are constants of their own; any other C above one 64-byte vector that is
// not a multiple of it runs as whole vectors, the last one overlapping the one before it (its elements computed
// twice, to the same values: the runs are pure functions of their inputs).
template <typename bits, typename F>
inline void for_channel_runs(int64_t C, F&& f) {
  constexpr int64_t V = 64 / sizeof(bits);
  switch (C) {
    case 8: return f(std::integral_constant<int64_t, 8>{}, 0, std::integral_constant<int64_t, 8>{});
    case 16: return f(std::integral_constant<int64_t, 16>{}, 0, std::integral_constant<int64_t, 16>{});
    case 20: return f(std::integral_constant<int64_t, 20>{}, 0, std::integral_constant<int64_t, 20>{});
    case 32: return f(std::integral_constant<int64_t, 32>{}, 0, std::integral_constant<int64_t, 32>{});
    default: break;
  }
  if (C < V || C % V == 0) return f(C, 0, C);  // a multiple of V fills whole vectors as it is
  for (int64_t offset = 0; offset + V <= C; offset += V) f(std::integral_constant<int64_t, V>{}, offset, C);
  if (C % V) f(std::integral_constant<int64_t, V>{}, C - V, C);
}

bool channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

std::tuple<at::Tensor, at::Tensor> relu_max_pool2d_forward_cpu(const at::Tensor& input) {
  TORCH_CHECK(input.dim() == 4, "stn::relu_max_pool2d: input must be (N, C, H, W), got ", input.sizes());
  const bool last = channels_last(input);
  const auto format = last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = input.contiguous(format);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OH = H / 2, OW = W / 2;
  TORCH_CHECK(OH > 0 && OW > 0, "stn::relu_max_pool2d: a ", H, "x", W, " map is too small for 2x2 pooling");
  at::Tensor out = at::empty({N, C, OH, OW}, x.options().memory_format(format));
  at::Tensor which = at::empty({N, C, OH, OW}, x.options().dtype(at::kByte).memory_format(format));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "relu_max_pool2d_forward", [&] {
    using bits = typename Bits<scalar_t>::type;
    const bits* xp = reinterpret_cast<const bits*>(x.const_data_ptr<scalar_t>());
    bits* op = reinterpret_cast<bits*>(out.mutable_data_ptr<scalar_t>());
    uint8_t* wp = which.mutable_data_ptr<uint8_t>();
    // an output row: OW·C outputs channels-last (consecutive channels, then the next window), OW otherwise
    const int64_t rows = last ? N * OH : N * C * OH, length = last ? OW * C : OW;
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / OH, oh = r % OH;  // plane: n channels-last, (n, c) otherwise
        if (last) {
          const bits* top = xp + (plane * H + 2 * oh) * W * C;
          for_channel_runs<bits>(C, [&](auto count, int64_t offset, auto c) {
            for (int64_t ow = 0; ow < OW; ++ow) {
              const bits* t = top + 2 * ow * c + offset;
              const int64_t o = r * length + ow * c + offset;
              pool_run<bits, 1>(t, t + c, t + W * c, t + W * c + c, count, op + o, wp + o);
            }
          });
        } else {
          const bits* t = xp + (plane * H + 2 * oh) * W;
          pool_run<bits, 2>(t, t + 1, t + W, t + W + 1, OW, op + r * length, wp + r * length);
        }
      }
    });
  });
  return {out, which};
}

at::Tensor relu_max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& which,
                                        at::IntArrayRef input_size) {
  TORCH_CHECK(input_size.size() == 4, "stn::relu_max_pool2d_backward: input_size must have 4 entries");
  TORCH_CHECK(which.scalar_type() == at::kByte && which.sizes() == grad_output.sizes(),
              "stn::relu_max_pool2d_backward: `which` must be the forward's uint8 map of the output's shape");
  const bool last = channels_last(which);
  const auto format = last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor g = grad_output.contiguous(format), k = which.contiguous(format);
  const int64_t N = input_size[0], C = input_size[1], H = input_size[2], W = input_size[3], OH = H / 2, OW = W / 2;
  at::Tensor grad = at::empty(input_size, g.options().memory_format(format));
  if (H % 2 || W % 2) grad.zero_();  // an odd last row or column takes no part in the pooling
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "relu_max_pool2d_backward", [&] {
    using bits = typename Bits<scalar_t>::type;
    const bits* gp = reinterpret_cast<const bits*>(g.const_data_ptr<scalar_t>());
    const uint8_t* kp = k.const_data_ptr<uint8_t>();
    bits* dp = reinterpret_cast<bits*>(grad.mutable_data_ptr<scalar_t>());
    const int64_t rows = last ? N * OH : N * C * OH, length = last ? OW * C : OW;
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / OH, oh = r % OH;
        if (last) {
          bits* top = dp + (plane * H + 2 * oh) * W * C;
          for_channel_runs<bits>(C, [&](auto count, int64_t offset, auto c) {
            for (int64_t ow = 0; ow < OW; ++ow) {
              bits* t = top + 2 * ow * c + offset;
              const int64_t o = r * length + ow * c + offset;
              unpool_run<bits, 1>(gp + o, kp + o, count, t, t + c, t + W * c, t + W * c + c);
            }
          });
        } else {
          bits* t = dp + (plane * H + 2 * oh) * W;
          using pair = typename Bits<scalar_t>::pair;
          if constexpr (std::is_void_v<pair>)
            unpool_run<bits, 2>(gp + r * length, kp + r * length, OW, t, t + 1, t + W, t + W + 1);
          else
            unpool_pairs<bits, pair>(gp + r * length, kp + r * length, OW, t, t + W);
        }
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(stn, CPU, m) {
  m.impl("relu_max_pool2d_forward", &relu_max_pool2d_forward_cpu);
  m.impl("relu_max_pool2d_backward", &relu_max_pool2d_backward_cpu);
}

}  // namespace stn
