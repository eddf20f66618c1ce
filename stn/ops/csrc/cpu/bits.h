// std::bit_cast for C++17 builds: torch's extension builder picks the language standard (C++17 up to
// torch 2.11, C++20 later), and the CPU kernels must compile under both.
#pragma once

#include <cstring>
#include <type_traits>

namespace stn {

template <typename To, typename From>
inline To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From) && std::is_trivially_copyable_v<From>, "bit_cast: sizes differ");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

}  // namespace stn
