// Text taken from files that may be hostile (names in an archive, a pickle or an index, values of a
// JSON file, a tokenizer or a chat template) goes into error messages through these: one line,
// bounded length, whatever the file holds. (A JSON value is quoted with brief_json, <hooklens/json_read.h>.)
#pragma once
#include <hooklens/tokenizer.h>  // utf8_decode_replace

#include <algorithm>
#include <string>
#include <string_view>

namespace hooklens {

// A value to quote in a message: bytes that are not UTF-8 become U+FFFD, control characters are
// escaped (\n, \t, \x01), and text past `max` bytes is cut (on a character boundary) and ends in
// "...". The one quoting helper of hooklens: the tokenizers and chat templates use it too.
inline std::string brief_text(std::string_view raw, std::size_t max = 60) {
  const std::string valid = utf8_decode_replace(raw.substr(0, std::min(raw.size(), 4 * max)));
  std::string s;
  for (const char ch : valid) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') s += "\\n";
    else if (c == '\r') s += "\\r";
    else if (c == '\t') s += "\\t";
    else if (c < 0x20 || c == 0x7f) s += {'\\', 'x', "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]};
    else s += ch;
    if (s.size() > max + 4) break;  // enough to know it is cut
  }
  if (s.size() > max) {
    std::size_t cut = max < 3 ? 0 : max - 3;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // not inside a character
    s = s.substr(0, cut) + "...";
  }
  return s;
}

// The first line of another library's message (an exception's what()) that says something, cut as
// brief_text does; libtorch's may open with a blank line and go on with a backtrace.
inline std::string first_line(const std::string& text, std::size_t max = 300) {
  for (std::size_t at = 0; at < text.size();) {
    const std::size_t end = std::min(text.find('\n', at), text.size());
    const std::string line = text.substr(at, end - at);
    if (line.find_first_not_of(" \t\r") != std::string::npos) return brief_text(line, max);
    at = end + 1;
  }
  return "(no message)";
}

// A whole message as one line of at most 1000 bytes.
inline std::string one_line(const std::string& s) { return brief_text(s, 1000); }

}  // namespace hooklens
