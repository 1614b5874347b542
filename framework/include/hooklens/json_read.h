// Reading JSON that may be hostile (config.json, tokenizer files, safetensors headers, weight
// indexes, architecture specs, run manifests, analyzer reports): every JSON hooklens reads goes
// through here, so nesting is bounded and a refusal is one short line that names the file.
// Header-only, so that the torch-free readers (and the fuzz targets built from their sources) need
// no other file.
#pragma once
#include <hooklens/error.h>
#include <hooklens/message_text.h>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

namespace hooklens {

// The deepest nesting of arrays and objects accepted. nlohmann's dump(), copies and comparisons
// recurse once per level, so a value a few thousand levels deep overflows the stack; no real file
// nests more than about ten.
constexpr std::size_t kMaxJsonDepth = 128;

// The byte offset at which `text` opens its (max_depth + 1)-th enclosing array or object, or npos
// if it never nests that deep. Brackets inside strings do not count. One pass, no allocation; it
// runs before the parser, so a deep value is never built. (On malformed text the count may differ
// from the parser's view only after the parser would have stopped.)
inline std::size_t json_depth_overflow(std::string_view text, std::size_t max_depth = kMaxJsonDepth) {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;  // the escaped character, a quote included
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if ((c == ']' || c == '}') && depth > 0) --depth;
  }
  return std::string_view::npos;
}

// Throws Error("<what>: JSON nested deeper than N levels (at byte B)") when json_depth_overflow finds
// a place.
inline void check_json_depth(std::string_view text, const std::string& what, std::size_t max_depth = kMaxJsonDepth) {
  const std::size_t at = json_depth_overflow(text, max_depth);
  if (at != std::string_view::npos)
    throw Error(what + ": JSON nested deeper than " + std::to_string(max_depth) + " levels (at byte " +
                std::to_string(at) + ")");
}

// nlohmann's message for a message of ours: its "last read: '...'" quotes the token it stopped in,
// which may be a whole 100 KB string, so that part is cut.
inline std::string json_error_text(const std::exception& e) {
  std::string s = e.what();
  const std::string mark = "last read: '";
  const std::size_t at = s.find(mark);
  if (at != std::string::npos) {
    std::string token = s.substr(at + mark.size());
    if (!token.empty() && token.back() == '\'') token.pop_back();
    s = s.substr(0, at + mark.size()) + brief_text(token, 40) + "'";
  }
  return brief_text(s, 300);
}

// Parses `text`, depth checked first. Malformed JSON is Error("<what>: malformed JSON: <reason>").
// `callback` is nlohmann's parser callback (e.g. to see duplicate keys), or null.
inline nlohmann::json parse_json_text(std::string_view text, const std::string& what,
                                      const nlohmann::json::parser_callback_t& callback = nullptr) {
  check_json_depth(text, what);
  try {
    return nlohmann::json::parse(text.data(), text.data() + text.size(), callback);
  } catch (const nlohmann::json::exception& e) {
    throw Error(what + ": malformed JSON: " + json_error_text(e));
  }
}

// A file's bytes; Error "<file>: cannot open" / "<file>: cannot read".
inline std::string read_text_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error(file.string() + ": cannot read");
  return std::move(text).str();
}

// Reads and parses a JSON file; every refusal is an Error that names the file.
inline nlohmann::json read_json_file(const std::filesystem::path& file) {
  return parse_json_text(read_text_file(file), file.string());
}

// A JSON value to quote in a message: compact, one line, at most `max` bytes (brief_text).
inline std::string brief_json(const nlohmann::json& v, std::size_t max = 60) {
  return brief_text(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), max);
}

}  // namespace hooklens
