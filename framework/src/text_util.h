// Internal helpers of the text code (tokenizers, chat templates): UTF-8 and PCRE2 regular
// expressions. (Quotes in error messages: brief_text, hooklens/message_text.h.)
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;
struct pcre2_real_match_context_8;

namespace hooklens::text {

// Appends the UTF-8 encoding of `cp` (a Unicode scalar value).
void append_utf8(std::string& out, char32_t cp);

// Reads one well-formed UTF-8 code point at `pos`; returns its length, or 0 if ill-formed there.
std::size_t read_codepoint(std::string_view s, std::size_t pos, char32_t& cp);

// A PCRE2 regular expression (UTF, Unicode properties), compiled once (JIT when available) and
// shared read-only between threads. Matching is bounded: a pattern that backtracks without end
// on some text is an Error, never a hang.
class Regex {
 public:
  // Throws Error("... regex '<pattern>' ...: <reason>") when the pattern does not compile.
  explicit Regex(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The matches in `text` (valid UTF-8) from left to right, as [start, end) byte offsets, with
  // Oniguruma's find_iter rule (which Hugging Face's tokenizers use): an empty match right where
  // the previous match ended is skipped.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view text) const;

  // Whether the pattern matches anywhere in `text` (valid UTF-8).
  bool search(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  int match(std::string_view text, std::size_t offset, void* match_data) const;

  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;
  pcre2_real_match_context_8* context_ = nullptr;
};

// A PCRE2 pattern matching `literal` exactly.
std::string regex_escape(std::string_view literal);

}  // namespace hooklens::text

namespace hooklens::text {

// Unicode's White_Space property (what Rust's char::is_whitespace and regex \s mean).
inline bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's str.isspace (what str.strip() and re's \s remove): White_Space plus U+001C..U+001F.
inline bool is_python_space(char32_t c) { return is_white_space(c) || (c >= 0x1C && c <= 0x1F); }

}  // namespace hooklens::text
