// UTF-8 decoding with replacement, matching Python's bytes.decode('utf-8', errors='replace').
//
// Python follows the Unicode "maximal subpart" practice: an ill-formed sequence is replaced by one
// U+FFFD for the longest prefix of a well-formed sequence (Unicode Table 3-7), and a byte that
// cannot start any sequence gets its own U+FFFD.
#include "hooklens/tokenizer.h"

#include <cstddef>
#include <string>
#include <string_view>

namespace hooklens {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The well-formed byte ranges of one sequence, from its first byte (Unicode Table 3-7).
struct SequenceShape {
  std::size_t length;                     // 0: the byte cannot start a sequence
  unsigned char second_lo, second_hi;     // the range allowed for the second byte
};

SequenceShape shape_of(unsigned char lead) {
  if (lead < 0x80) return {1, 0, 0};
  if (lead >= 0xC2 && lead <= 0xDF) return {2, 0x80, 0xBF};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};               // no overlongs
  if (lead == 0xED) return {3, 0x80, 0x9F};               // no surrogates
  if (lead >= 0xE1 && lead <= 0xEF) return {3, 0x80, 0xBF};
  if (lead == 0xF0) return {4, 0x90, 0xBF};               // no overlongs
  if (lead == 0xF4) return {4, 0x80, 0x8F};               // nothing above U+10FFFF
  if (lead >= 0xF1 && lead <= 0xF3) return {4, 0x80, 0xBF};
  return {0, 0, 0};                                       // 80..C1, F5..FF
}

// How many bytes from `pos` belong to the well-formed sequence (or its maximal prefix) there.
std::size_t well_formed_prefix(std::string_view bytes, std::size_t pos, const SequenceShape& shape) {
  std::size_t n = 1;
  while (n < shape.length && pos + n < bytes.size()) {
    const auto b = static_cast<unsigned char>(bytes[pos + n]);
    const bool ok = n == 1 ? (b >= shape.second_lo && b <= shape.second_hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
    ++n;
  }
  return n;
}

}  // namespace

std::string utf8_decode_replace(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    const SequenceShape shape = shape_of(static_cast<unsigned char>(bytes[pos]));
    if (shape.length == 0) {
      out += kReplacement;
      ++pos;
      continue;
    }
    const std::size_t n = well_formed_prefix(bytes, pos, shape);
    if (n == shape.length)
      out.append(bytes.substr(pos, n));
    else
      out += kReplacement;
    pos += n;
  }
  return out;
}

}  // namespace hooklens
