#include "text_util.h"

#include "hooklens/error.h"
#include "hooklens/message_text.h"
#include "hooklens/tokenizer.h"

#include <fmt/format.h>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <memory>

namespace hooklens {

const ChatConfig& Tokenizer::chat_config() const {
  static const ChatConfig none{{}, {}, "the tokenizer has no chat template"};
  return none;
}

namespace text {

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::size_t read_codepoint(std::string_view s, std::size_t pos, char32_t& cp) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  const std::size_t len = lead < 0x80 ? 1 : lead < 0xC2 ? 0 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : lead < 0xF5 ? 4 : 0;
  if (len == 0 || pos + len > s.size()) return 0;
  // Re-encoding and comparing rejects overlongs, surrogates and bad continuation bytes at once.
  const std::string_view seq = s.substr(pos, len);
  cp = len == 1 ? lead : lead & (0x7F >> len);
  for (std::size_t i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<unsigned char>(seq[i]) & 0x3F);
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return 0;
  std::string back;
  append_utf8(back, cp);
  return back == seq ? len : 0;
}

namespace {

std::string pcre2_message(int code) {
  std::array<PCRE2_UCHAR, 256> buf{};
  pcre2_get_error_message(code, buf.data(), buf.size());
  return reinterpret_cast<const char*>(buf.data());
}

// Each thread matches on its own JIT stack (the default one, 32 KiB on the machine stack, is too
// small for long whitespace runs under some patterns); made on first use, freed at thread exit.
pcre2_jit_stack* thread_jit_stack(void*) {
  struct Holder {
    pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    ~Holder() { pcre2_jit_stack_free(stack); }
  };
  thread_local Holder holder;
  return holder.stack;  // null (out of memory) makes PCRE2 use its default stack
}

// Backtracking budget per match: far above what any real pre-tokenizer pattern needs on any text.
constexpr std::uint32_t kMatchLimit = 20'000'000;

}  // namespace

Regex::Regex(std::string_view pattern) : pattern_(pattern) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  // \C (one byte, even inside a character) would cut pieces mid-character, and the next match on
  // such a piece (PCRE2_NO_UTF_CHECK) reads past its end.
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C, &err, &err_offset, nullptr);
  if (code_ == nullptr)
    throw Error(fmt::format("cannot compile the regex '{}': {} at offset {}", brief_text(pattern), pcre2_message(err),
                            err_offset));
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // the interpreter is the fallback when JIT is missing
  context_ = pcre2_match_context_create(nullptr);
  if (context_ == nullptr) {
    pcre2_code_free(code_);
    throw Error("out of memory compiling a regex");
  }
  pcre2_set_match_limit(context_, kMatchLimit);
  pcre2_jit_stack_assign(context_, &thread_jit_stack, nullptr);
}

Regex::~Regex() {
  pcre2_match_context_free(context_);
  pcre2_code_free(code_);
}

int Regex::match(std::string_view text, std::size_t offset, void* match_data) const {
  // The caller's text is valid UTF-8 (checked once up front): no per-match re-check.
  const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), offset,
                             PCRE2_NO_UTF_CHECK, static_cast<pcre2_match_data*>(match_data), context_);
  if (rc >= 0 || rc == PCRE2_ERROR_NOMATCH) return rc;
  if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
      rc == PCRE2_ERROR_JIT_STACKLIMIT)
    throw Error(fmt::format("the regex '{}' backtracks too much on a {}-byte text ({})", brief_text(pattern_), text.size(),
                            pcre2_message(rc)));
  throw Error(fmt::format("the regex '{}' failed: {}", brief_text(pattern_), pcre2_message(rc)));
}

std::vector<std::pair<std::size_t, std::size_t>> Regex::find_all(std::string_view text) const {
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
  if (!md) throw Error("out of memory while matching a regex");
  std::vector<std::pair<std::size_t, std::size_t>> matches;
  std::size_t search_from = 0;
  bool matched_before = false;
  std::size_t last_match_end = 0;
  while (search_from <= text.size()) {
    if (match(text, search_from, md.get()) == PCRE2_ERROR_NOMATCH) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const std::size_t start = ov[0], end = ov[1];
    if (start == end && matched_before && last_match_end == end) {
      // Oniguruma's rule: step over one character and search again.
      if (search_from >= text.size()) break;
      char32_t cp = 0;
      search_from += std::max<std::size_t>(1, read_codepoint(text, search_from, cp));
      continue;
    }
    matches.emplace_back(start, end);
    search_from = end;
    matched_before = true;
    last_match_end = end;
  }
  return matches;
}

bool Regex::search(std::string_view text) const {
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
      pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
  if (!md) throw Error("out of memory while matching a regex");
  return match(text, 0, md.get()) != PCRE2_ERROR_NOMATCH;
}

std::string regex_escape(std::string_view literal) {
  std::string out;
  for (const char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    // A backslash before any ASCII non-alphanumeric makes it literal; other bytes stand for themselves.
    if (u < 0x80 && !std::isalnum(u)) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace text
}  // namespace hooklens
