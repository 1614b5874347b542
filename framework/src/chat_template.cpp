// A small Jinja: the subset Hugging Face chat templates use, with the semantics of Jinja 3 as
// transformers configures it (trim_blocks, lstrip_blocks, keep_trailing_newline off). The
// template is lexed (whitespace control applied as Jinja's lexer does), parsed into a tree and
// run by a tree walker over a scope stack. Everything is bounded, so hostile templates fail
// with an Error instead of exhausting the stack, the memory or the time.
#include "hooklens/chat_template.h"

#include "hooklens/error.h"
#include "hooklens/message_text.h"
#include "hooklens/tokenizer.h"
#include "text_util.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>

namespace hooklens {
namespace {


constexpr std::size_t kMaxSourceBytes = 1 << 20;
constexpr int kMaxDepth = 64;                       // nesting of parentheses, expressions and blocks
constexpr int kMaxExprHeight = 256;                 // of an expression tree (a + b + ... chains too)
constexpr std::size_t kMaxText = 16 << 20;          // bytes of the output, and of any one string
constexpr std::size_t kMaxListItems = 1 << 17;
constexpr std::uint64_t kMaxIterations = 1000000;   // loop iterations of one rendering
// Work of one rendering, counted roughly in bytes: each evaluation step and each value a list
// copies or compares costs kStepCost, and each string an evaluation yields (made or copied) its
// length. Bounds time and memory where the limits above do not (a 16 MiB string copied in every
// iteration of a loop, thousands of steps in each of a million iterations).
constexpr std::uint64_t kMaxWork = 256 << 20;
constexpr std::uint64_t kStepCost = 64;

// ---------------------------------------------------------------------------------------------
// UTF-8 text as Python sees it (code points)

std::vector<std::string_view> code_points(std::string_view s) {
  std::vector<std::string_view> out;
  for (std::size_t pos = 0; pos < s.size();) {
    char32_t cp = 0;
    const std::size_t len = std::max<std::size_t>(1, text::read_codepoint(s, pos, cp));
    out.push_back(s.substr(pos, len));
    pos += len;
  }
  return out;
}

char32_t first_code_point(std::string_view s) {
  char32_t cp = 0;
  return text::read_codepoint(s, 0, cp) ? cp : 0xFFFD;
}

// Python's str.strip(): removes whitespace (str.isspace), or the code points in `chars`.
std::string_view strip(std::string_view s, bool left, bool right, const std::optional<std::string>& chars = {}) {
  const std::vector<std::string_view> cps = code_points(s);
  std::vector<std::string_view> set;  // sorted: a long `chars` made stripping quadratic
  if (chars) set = code_points(*chars);
  std::sort(set.begin(), set.end());
  const auto removable = [&](std::string_view cp) {
    return chars ? std::binary_search(set.begin(), set.end(), cp) : text::is_python_space(first_code_point(cp));
  };
  std::size_t begin = 0, end = cps.size();
  while (left && begin < end && removable(cps[begin])) ++begin;
  while (right && end > begin && removable(cps[end - 1])) --end;
  if (begin == end) return {};
  const std::size_t from = static_cast<std::size_t>(cps[begin].data() - s.data());
  const std::size_t to = static_cast<std::size_t>(cps[end - 1].data() - s.data()) + cps[end - 1].size();
  return s.substr(from, to - from);
}

// s.find(needle, from) in linear time: glibc's memmem, where std::string::find is quadratic on
// e.g. 'aaa...ab' in 'aaa...a'.
std::size_t find_text(std::string_view s, std::string_view needle, std::size_t from) {
  if (from > s.size()) return std::string_view::npos;
  const void* at = memmem(s.data() + from, s.size() - from, needle.data(), needle.size());
  return at == nullptr ? std::string_view::npos : static_cast<std::size_t>(static_cast<const char*>(at) - s.data());
}

bool all_space(std::string_view s) {
  if (s.empty()) return false;
  for (const std::string_view cp : code_points(s))
    if (!text::is_python_space(first_code_point(cp))) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Positions and errors

class Positions {
 public:
  explicit Positions(const std::string& source) : source_(source) {
    line_starts_.push_back(0);
    for (std::size_t i = 0; i < source.size(); ++i)
      if (source[i] == '\n') line_starts_.push_back(i + 1);
  }
  std::string operator()(std::size_t pos) const {
    const auto line = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos) - line_starts_.begin();
    const std::size_t start = line_starts_[static_cast<std::size_t>(line - 1)];
    const std::size_t column = code_points(std::string_view(source_).substr(start, pos - start)).size() + 1;
    return fmt::format("line {}, column {}", line, column);
  }

 private:
  const std::string& source_;
  std::vector<std::size_t> line_starts_;
};

[[noreturn]] void fail_at(const Positions& at, std::size_t pos, const std::string& message) {
  throw Error(fmt::format("chat template: {} at {}", message, at(pos)));
}

// ---------------------------------------------------------------------------------------------
// Values

struct Value;
using List = std::vector<Value>;
using Dict = std::map<std::string, Value>;

struct Value {
  enum class Type { undefined, none, boolean, integer, string, list, dict };
  Type type = Type::undefined;
  bool boolean = false;
  std::int64_t integer = 0;
  std::string string;  // the text; for undefined, why it is undefined (for error messages)
  std::shared_ptr<const List> list;
  std::shared_ptr<const Dict> dict;
  int depth = 0;  // of nested lists and dicts: bounded, so comparing and freeing cannot overflow the stack

  static Value undefined(std::string why) {
    Value v;
    v.string = std::move(why);
    return v;
  }
  static Value none() { return with(Type::none); }
  static Value of(bool b) {
    Value v = with(Type::boolean);
    v.boolean = b;
    return v;
  }
  static Value of(std::int64_t i) {
    Value v = with(Type::integer);
    v.integer = i;
    return v;
  }
  static Value of(std::string s) {
    Value v = with(Type::string);
    v.string = std::move(s);
    return v;
  }
  static Value of(List l) {
    Value v = with(Type::list);
    for (const Value& item : l) v.depth = std::max(v.depth, item.depth + 1);
    v.list = std::make_shared<const List>(std::move(l));
    return v;
  }
  static Value of(Dict d) { return of(std::make_shared<const Dict>(std::move(d))); }
  static Value of(std::shared_ptr<const Dict> d) {
    Value v = with(Type::dict);
    for (const auto& entry : *d) v.depth = std::max(v.depth, entry.second.depth + 1);
    v.dict = std::move(d);
    return v;
  }

  bool is(Type t) const { return type == t; }
  bool is_number() const { return type == Type::integer || type == Type::boolean; }  // Python: bool is an int
  std::int64_t number() const { return type == Type::boolean ? std::int64_t(boolean) : integer; }

 private:
  static Value with(Type t) {
    Value v;
    v.type = t;
    return v;
  }
};

// Python's type names, for messages that read like the errors Jinja users know.
const char* type_name(const Value& v) {
  switch (v.type) {
    case Value::Type::undefined: return "Undefined";
    case Value::Type::none: return "NoneType";
    case Value::Type::boolean: return "bool";
    case Value::Type::integer: return "int";
    case Value::Type::string: return "str";
    case Value::Type::list: return "list";
    case Value::Type::dict: return "dict";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Value::Type::undefined:
    case Value::Type::none: return false;
    case Value::Type::boolean: return v.boolean;
    case Value::Type::integer: return v.integer != 0;
    case Value::Type::string: return !v.string.empty();
    case Value::Type::list: return !v.list->empty();
    case Value::Type::dict: return !v.dict->empty();
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Lexing

enum class TokenKind { text, variable_begin, variable_end, block_begin, block_end, name, string, integer, op, end };

struct Token {
  TokenKind kind;
  std::string value;  // text, name, operator, or the string literal's value
  std::size_t pos;
  std::int64_t integer = 0;
};

class Lexer {
 public:
  Lexer(const std::string& source, const Positions& at) : src_(source), at_(at) {}

  std::vector<Token> run() {
    bool line_starting = true;  // the text before the next tag starts a line (for lstrip_blocks)
    while (pos_ < src_.size()) {
      const std::size_t open = find_tag(pos_);
      if (open == std::string::npos) {
        emit_text(src_.substr(pos_), pos_);
        break;
      }
      const char kind = src_[open + 1];
      std::size_t after = open + 2;
      const char sign = after < src_.size() && (src_[after] == '-' || src_[after] == '+') ? src_[after++] : 0;
      std::string_view text = std::string_view(src_).substr(pos_, open - pos_);
      if (sign == '-') {
        text = strip(text, false, true);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: spaces between the start of the line and a block or comment tag go.
        const std::size_t line_start = text.rfind('\n') == std::string_view::npos ? 0 : text.rfind('\n') + 1;
        if ((line_start > 0 || line_starting) && all_space(text.substr(line_start))) text = text.substr(0, line_start);
      }
      emit_text(text, pos_);
      pos_ = after;
      if (kind == '#')
        skip_comment(open);
      else
        lex_tag(kind == '{', open);
      line_starting = pos_ > 0 && src_[pos_ - 1] == '\n';
    }
    tokens_.push_back({TokenKind::end, "", src_.size()});
    return std::move(tokens_);
  }

 private:
  std::size_t find_tag(std::size_t from) const {
    for (std::size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1))
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return std::string::npos;
  }

  void emit_text(std::string_view text, std::size_t pos) {
    if (!text.empty()) tokens_.push_back({TokenKind::text, std::string(text), pos});
  }

  [[noreturn]] void fail(std::size_t pos, const std::string& message) const { fail_at(at_, pos, message); }

  // After a tag's end: "-" takes all whitespace that follows, trim_blocks one newline after a
  // block or comment; "+" keeps everything.
  void after_end(char sign, bool block) {
    if (sign == '-') {
      // Only the whitespace is read: reading the whole rest for each tag was quadratic.
      char32_t cp = 0;
      while (pos_ < src_.size()) {
        const std::size_t len = text::read_codepoint(src_, pos_, cp);
        if (len == 0 || !text::is_python_space(cp)) break;
        pos_ += len;
      }
    } else if (sign != '+' && block && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
    }
  }

  void skip_comment(std::size_t open) {
    for (std::size_t i = pos_; i + 1 < src_.size(); ++i) {
      if (src_.compare(i, 2, "#}") != 0) continue;
      const char sign = i > pos_ && (src_[i - 1] == '-' || src_[i - 1] == '+') ? src_[i - 1] : 0;
      pos_ = i + 2;
      after_end(sign, true);
      return;
    }
    fail(open, "comment '{#' is not closed");
  }

  bool at_end_marker(bool variable, char& sign, std::size_t& length) const {
    const std::string_view rest = std::string_view(src_).substr(pos_);
    const std::string_view close = variable ? "}}" : "%}";
    for (const char s : {'-', '+'})
      if (rest.size() > 2 && rest[0] == s && rest.substr(1, 2) == close && !(variable && s == '+')) {
        sign = s;
        length = 3;
        return true;
      }
    if (rest.substr(0, 2) == close) {
      sign = 0;
      length = 2;
      return true;
    }
    return false;
  }

  void lex_tag(bool variable, std::size_t open) {
    tokens_.push_back({variable ? TokenKind::variable_begin : TokenKind::block_begin, "", open});
    std::vector<char> brackets;  // the closing brackets expected, innermost last
    bool first_name = !variable;
    while (true) {
      while (pos_ < src_.size() && text::is_python_space(first_code_point(std::string_view(src_).substr(pos_))))
        pos_ += code_points(std::string_view(src_).substr(pos_, 4)).front().size();
      if (pos_ >= src_.size()) fail(open, fmt::format("'{}' is not closed", variable ? "{{" : "{%"));
      char sign = 0;
      std::size_t length = 0;
      if (brackets.empty() && at_end_marker(variable, sign, length)) {
        tokens_.push_back({variable ? TokenKind::variable_end : TokenKind::block_end, "", pos_});
        pos_ += length;
        after_end(sign, !variable);
        return;
      }
      const std::size_t start = pos_;
      const char c = src_[pos_];
      if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_integer();
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (pos_ < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) ++pos_;
        tokens_.push_back({TokenKind::name, src_.substr(start, pos_ - start), start});
        // {% raw %} would need its own lexing; say so before its body confuses the lexer.
        if (first_name && tokens_.back().value == "raw") fail(start, "unsupported tag 'raw'");
      } else if (c == '\'' || c == '"') {
        lex_string();
      } else {
        lex_operator(brackets);
      }
      first_name = false;
    }
  }

  void lex_integer() {
    const std::size_t start = pos_;
    while (pos_ < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos_]))) ++pos_;
    if (pos_ < src_.size() && (src_[pos_] == '.' || src_[pos_] == '_' || std::isalpha(static_cast<unsigned char>(src_[pos_]))) &&
        !(src_[pos_] == '.' && (pos_ + 1 >= src_.size() || !std::isdigit(static_cast<unsigned char>(src_[pos_ + 1])))))
      fail(start, "unsupported number literal (only decimal integers are)");
    const std::string digits = src_.substr(start, pos_ - start);
    if (digits.size() > 1 && digits[0] == '0') fail(start, "unsupported number literal (only decimal integers are)");
    std::int64_t value = 0;
    for (const char d : digits)
      if (__builtin_mul_overflow(value, 10, &value) || __builtin_add_overflow(value, d - '0', &value))
        fail(start, "integer literal too large");
    tokens_.push_back({TokenKind::integer, digits, start, value});
  }

  // A quoted string with Python's escapes (Jinja decodes literals with 'unicode-escape').
  void lex_string() {
    const std::size_t start = pos_;
    const char quote = src_[pos_++];
    std::string value;
    while (true) {
      if (pos_ >= src_.size()) fail(start, "string literal is not closed");
      const char c = src_[pos_++];
      if (c == quote) break;
      if (c != '\\') {
        value += c;
        continue;
      }
      if (pos_ >= src_.size()) fail(start, "string literal is not closed");
      const char e = src_[pos_++];
      const auto hex = [&](int digits) {
        char32_t cp = 0;
        for (int i = 0; i < digits; ++i) {
          if (pos_ >= src_.size() || !std::isxdigit(static_cast<unsigned char>(src_[pos_])))
            fail(start, fmt::format("truncated \\{} escape in a string literal", e));
          const char h = src_[pos_++];
          cp = cp * 16 + char32_t(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : std::tolower(h) - 'a' + 10);
        }
        if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) fail(start, "escape of an invalid code point in a string literal");
        text::append_utf8(value, cp);
      };
      switch (e) {
        case '\n': break;  // a backslash before a newline continues the line
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'n': value += '\n'; break;
        case 'r': value += '\r'; break;
        case 't': value += '\t'; break;
        case 'v': value += '\v'; break;
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        case 'N': fail(start, "unsupported \\N{...} escape in a string literal");
        default:
          if (e >= '0' && e <= '7') {
            char32_t cp = char32_t(e - '0');
            for (int i = 0; i < 2 && pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '7'; ++i)
              cp = cp * 8 + char32_t(src_[pos_++] - '0');
            text::append_utf8(value, cp);
          } else {
            value += '\\';  // Python keeps an unknown escape as it is
            value += e;
          }
      }
    }
    tokens_.push_back({TokenKind::string, std::move(value), start});
  }

  void lex_operator(std::vector<char>& brackets) {
    const std::size_t start = pos_;
    static const char* const two[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : two)
      if (src_.compare(pos_, 2, op) == 0) {
        pos_ += 2;
        tokens_.push_back({TokenKind::op, op, start});
        return;
      }
    const char c = src_[pos_];
    if (std::string_view("+-/*%~[](){}><=.:|,;").find(c) == std::string_view::npos)
      fail(start, fmt::format("unexpected character '{}'", brief_text(code_points(std::string_view(src_).substr(pos_, 4)).front())));
    if (c == '(' || c == '[' || c == '{') brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty() || brackets.back() != c) fail(start, fmt::format("unexpected '{}'", c));
      brackets.pop_back();
    }
    ++pos_;
    tokens_.push_back({TokenKind::op, std::string(1, c), start});
  }

  const std::string& src_;
  const Positions& at_;
  std::size_t pos_ = 0;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------------------------------------
// The tree

struct Expr {
  enum class Kind { literal, list, name, attribute, item, slice, call, filter, test, negate, plus, not_, and_, or_,
                    binary, compare, condition };
  Kind kind;
  std::size_t pos;
  Value value;                                  // literal
  std::string name;                             // name, attribute, filter, test, binary operator
  std::vector<std::unique_ptr<Expr>> children;  // operands (a null child: absent, e.g. a slice bound)
  std::vector<std::string> ops;                 // compare: the operator before each later operand
  bool negated = false;                         // test: 'is not'
  int height = 1;                               // of the subtree: bounded, so evaluation cannot overflow the stack
};
using ExprPtr = std::unique_ptr<Expr>;

struct Node {
  enum class Kind { text, output, if_, for_, set };
  Kind kind;
  std::size_t pos;
  std::string text;                  // text; the variable of set and for
  ExprPtr expr;                      // output; set's value; for's iterable
  std::vector<ExprPtr> conditions;   // if / elif
  std::vector<std::vector<Node>> bodies;  // if: one per condition, then else; for: body, then else
};

// Counts nesting on the way down, so that hostile input cannot exhaust the stack.
class DepthGuard {
 public:
  DepthGuard(int& depth, const Positions& at, std::size_t pos) : depth_(depth) {
    if (++depth_ > kMaxDepth) {
      --depth_;
      fail_at(at, pos, fmt::format("nested more than {} deep", kMaxDepth));
    }
  }
  ~DepthGuard() { --depth_; }
  DepthGuard(const DepthGuard&) = delete;
  DepthGuard& operator=(const DepthGuard&) = delete;

 private:
  int& depth_;
};

// ---------------------------------------------------------------------------------------------
// Parsing

class Parser {
 public:
  Parser(std::vector<Token> tokens, const Positions& at) : tokens_(std::move(tokens)), at_(at) {}

  std::vector<Node> parse_template() {
    std::string end;
    std::vector<Node> body = parse_body({}, end, 0);
    return body;
  }

 private:
  const Token& peek(std::size_t ahead = 0) const { return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)]; }
  const Token& next() {
    const Token& t = peek();
    if (pos_ < tokens_.size() - 1) ++pos_;
    return t;
  }
  bool is_op(const char* op, std::size_t ahead = 0) const {
    return peek(ahead).kind == TokenKind::op && peek(ahead).value == op;
  }
  bool is_name(const char* name, std::size_t ahead = 0) const {
    return peek(ahead).kind == TokenKind::name && peek(ahead).value == name;
  }
  [[noreturn]] void fail(std::size_t pos, const std::string& message) const { fail_at(at_, pos, message); }

  static std::string describe(const Token& t) {
    switch (t.kind) {
      case TokenKind::text: return "text";
      case TokenKind::variable_begin: return "'{{'";
      case TokenKind::variable_end: return "'}}'";
      case TokenKind::block_begin: return "'{%'";
      case TokenKind::block_end: return "'%}'";
      case TokenKind::name: return fmt::format("'{}'", brief_text(t.value));
      case TokenKind::string: return "a string";
      case TokenKind::integer: return "a number";
      case TokenKind::op: return fmt::format("'{}'", t.value);
      case TokenKind::end: return "the end of the template";
    }
    return "?";
  }

  void expect(TokenKind kind, const char* what) {
    if (peek().kind != kind) fail(peek().pos, fmt::format("expected {}, found {}", what, describe(peek())));
    next();
  }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(peek().pos, fmt::format("expected '{}', found {}", op, describe(peek())));
    next();
  }
  const Token& expect_name(const char* what) {
    if (peek().kind != TokenKind::name) fail(peek().pos, fmt::format("expected {}, found {}", what, describe(peek())));
    return next();
  }

  // Nodes up to a {% tag %} named in `ends` (its name consumed, stored in `end`), or the end.
  std::vector<Node> parse_body(std::initializer_list<const char*> ends, std::string& end, std::size_t opened_at) {
    std::vector<Node> nodes;
    while (true) {
      const Token& t = peek();
      if (t.kind == TokenKind::end) {
        if (ends.size() == 0) return nodes;
        fail(opened_at, fmt::format("block is not closed ('{{% {} %}}' is missing)", *(ends.end() - 1)));
      }
      if (t.kind == TokenKind::text) {
        nodes.push_back({Node::Kind::text, t.pos, t.value, nullptr, {}, {}});
        next();
        continue;
      }
      if (t.kind == TokenKind::variable_begin) {
        next();
        Node node{Node::Kind::output, t.pos, {}, parse_expression(), {}, {}};
        if (is_op(",")) fail(peek().pos, "unsupported tuple");
        expect(TokenKind::variable_end, "'}}'");
        nodes.push_back(std::move(node));
        continue;
      }
      expect(TokenKind::block_begin, "text or a tag");
      const Token& name = expect_name("a tag name");
      for (const char* e : ends)
        if (name.value == e) {
          end = name.value;
          return nodes;
        }
      if (name.value == "if")
        nodes.push_back(parse_if(name.pos));
      else if (name.value == "for")
        nodes.push_back(parse_for(name.pos));
      else if (name.value == "set")
        nodes.push_back(parse_set(name.pos));
      else if (name.value == "elif" || name.value == "else" || name.value == "endif" || name.value == "endfor")
        fail(name.pos, fmt::format("unexpected tag '{}'", name.value));
      else
        fail(name.pos, fmt::format("unsupported tag '{}'", brief_text(name.value)));
    }
  }

  Node parse_if(std::size_t pos) {
    DepthGuard guard(depth_, at_, pos);
    Node node{Node::Kind::if_, pos, {}, nullptr, {}, {}};
    node.conditions.push_back(parse_expression());
    expect(TokenKind::block_end, "'%}'");
    while (true) {
      std::string end;
      node.bodies.push_back(parse_body({"elif", "else", "endif"}, end, pos));
      if (end == "elif") {
        node.conditions.push_back(parse_expression());
        expect(TokenKind::block_end, "'%}'");
        continue;
      }
      expect(TokenKind::block_end, "'%}'");
      if (end == "else") {
        node.bodies.push_back(parse_body({"endif"}, end, pos));
        expect(TokenKind::block_end, "'%}'");
      }
      return node;
    }
  }

  Node parse_for(std::size_t pos) {
    DepthGuard guard(depth_, at_, pos);
    Node node{Node::Kind::for_, pos, expect_name("the loop variable").value, nullptr, {}, {}};
    if (is_op(",")) fail(peek().pos, "unsupported loop over tuples ('for a, b in ...')");
    if (!is_name("in")) fail(peek().pos, fmt::format("expected 'in', found {}", describe(peek())));
    next();
    node.expr = parse_expression(false);
    if (is_name("if")) fail(peek().pos, "unsupported loop filter ('for ... in ... if ...')");
    if (is_name("recursive")) fail(peek().pos, "unsupported recursive loop");
    expect(TokenKind::block_end, "'%}'");
    std::string end;
    node.bodies.push_back(parse_body({"else", "endfor"}, end, pos));
    expect(TokenKind::block_end, "'%}'");
    if (end == "else") {
      node.bodies.push_back(parse_body({"endfor"}, end, pos));
      expect(TokenKind::block_end, "'%}'");
    }
    return node;
  }

  Node parse_set(std::size_t pos) {
    Node node{Node::Kind::set, pos, expect_name("a variable name").value, nullptr, {}, {}};
    if (is_op(".")) fail(peek().pos, "unsupported assignment to an attribute (namespace)");
    if (is_op(",")) fail(peek().pos, "unsupported assignment to a tuple");
    if (peek().kind == TokenKind::block_end) fail(peek().pos, "unsupported block assignment ('{% set x %}...{% endset %}')");
    expect_op("=");
    node.expr = parse_expression();
    expect(TokenKind::block_end, "'%}'");
    return node;
  }

  ExprPtr make(Expr::Kind kind, std::size_t pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    return e;
  }
  ExprPtr make(Expr::Kind kind, std::size_t pos, ExprPtr a, ExprPtr b = nullptr) {
    auto e = make(kind, pos);
    adopt(*e, std::move(a));
    if (b) adopt(*e, std::move(b));
    return e;
  }

  // Adds an operand (null: an absent one), keeping the tree's height bounded.
  void adopt(Expr& parent, ExprPtr child) {
    if (child) parent.height = std::max(parent.height, child->height + 1);
    if (parent.height > kMaxExprHeight) fail(parent.pos, fmt::format("expression nested more than {} deep", kMaxExprHeight));
    parent.children.push_back(std::move(child));
  }

  // expression := or ('if' or ('else' expression)?)*   (conditional expressions, as Jinja's)
  ExprPtr parse_expression(bool with_condition = true) {
    DepthGuard guard(depth_, at_, peek().pos);
    ExprPtr e = parse_or();
    while (with_condition && is_name("if")) {
      const std::size_t pos = next().pos;
      auto cond = make(Expr::Kind::condition, pos);
      adopt(*cond, std::move(e));
      adopt(*cond, parse_or());
      adopt(*cond, is_name("else") ? (next(), parse_expression()) : nullptr);
      e = std::move(cond);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const std::size_t pos = next().pos;
      e = make(Expr::Kind::or_, pos, std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const std::size_t pos = next().pos;
      e = make(Expr::Kind::and_, pos, std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const std::size_t pos = next().pos;
      DepthGuard guard(depth_, at_, pos);
      return make(Expr::Kind::not_, pos, parse_not());
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr first = parse_math1();
    ExprPtr e;
    while (true) {
      std::string op;
      const std::size_t pos = peek().pos;
      if (peek().kind == TokenKind::op && (peek().value == "==" || peek().value == "!=" || peek().value == "<" ||
                                           peek().value == ">" || peek().value == "<=" || peek().value == ">=")) {
        op = next().value;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      if (!e) e = make(Expr::Kind::compare, pos, std::move(first));
      e->ops.push_back(op);
      adopt(*e, parse_math1());
    }
    return e ? std::move(e) : std::move(first);
  }

  ExprPtr parse_binary_level(int level) {
    // Jinja's precedence, loosest first: + -, then ~, then * / // %, then **.
    static const std::vector<std::vector<std::string>> levels = {{"+", "-"}, {"~"}, {"*", "/", "//", "%"}, {"**"}};
    if (level == int(levels.size())) return parse_unary(true);
    ExprPtr e = parse_binary_level(level + 1);
    while (peek().kind == TokenKind::op) {
      const auto& ops = levels[std::size_t(level)];
      if (std::find(ops.begin(), ops.end(), peek().value) == ops.end()) break;
      const Token& op = next();
      auto b = make(Expr::Kind::binary, op.pos, std::move(e), parse_binary_level(level + 1));
      b->name = op.value;
      e = std::move(b);
    }
    return e;
  }
  ExprPtr parse_math1() { return parse_binary_level(0); }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(depth_, at_, peek().pos);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& op = next();
      e = make(op.value == "-" ? Expr::Kind::negate : Expr::Kind::plus, op.pos, parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    return with_filter ? parse_filters_and_tests(std::move(e)) : std::move(e);
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    switch (t.kind) {
      case TokenKind::name: {
        next();
        auto e = make(Expr::Kind::literal, t.pos);
        if (t.value == "true" || t.value == "True") e->value = Value::of(true);
        else if (t.value == "false" || t.value == "False") e->value = Value::of(false);
        else if (t.value == "none" || t.value == "None") e->value = Value::none();
        else {
          e->kind = Expr::Kind::name;
          e->name = t.value;
        }
        return e;
      }
      case TokenKind::string: {
        auto e = make(Expr::Kind::literal, t.pos);
        std::string s;
        while (peek().kind == TokenKind::string) s += next().value;  // 'a' 'b' is 'ab', as in Python
        e->value = Value::of(std::move(s));
        return e;
      }
      case TokenKind::integer: {
        next();
        auto e = make(Expr::Kind::literal, t.pos);
        e->value = Value::of(t.integer);
        return e;
      }
      case TokenKind::op:
        if (t.value == "(") {
          next();
          ExprPtr e = parse_expression();
          if (is_op(",")) fail(peek().pos, "unsupported tuple");
          expect_op(")");
          return e;
        }
        if (t.value == "[") {
          next();
          auto e = make(Expr::Kind::list, t.pos);
          while (!is_op("]")) {
            if (!e->children.empty()) expect_op(",");
            if (is_op("]")) break;  // a trailing comma
            adopt(*e, parse_expression());
          }
          next();
          return e;
        }
        if (t.value == "{") fail(t.pos, "unsupported dict literal");
        break;
      default: break;
    }
    fail(t.pos, fmt::format("expected an expression, found {}", describe(t)));
  }

  std::vector<ExprPtr> parse_call_args() {
    expect_op("(");
    std::vector<ExprPtr> args;
    while (!is_op(")")) {
      if (!args.empty()) expect_op(",");
      if (is_op(")")) break;
      if (peek().kind == TokenKind::name && is_op("=", 1)) fail(peek().pos, "unsupported keyword argument");
      if (is_op("*") || is_op("**")) fail(peek().pos, "unsupported argument unpacking");
      args.push_back(parse_expression());
    }
    next();
    return args;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        const std::size_t pos = next().pos;
        if (peek().kind == TokenKind::integer) {  // x.0 is x[0]
          auto index = make(Expr::Kind::literal, peek().pos);
          index->value = Value::of(next().integer);
          e = make(Expr::Kind::item, pos, std::move(e), std::move(index));
          continue;
        }
        auto a = make(Expr::Kind::attribute, pos, std::move(e));
        a->name = expect_name("an attribute name").value;
        e = std::move(a);
      } else if (is_op("[")) {
        const std::size_t pos = next().pos;
        ExprPtr start = is_op(":") ? nullptr : parse_expression();
        if (is_op(":")) {
          next();
          ExprPtr stop = is_op("]") || is_op(":") ? nullptr : parse_expression();
          if (is_op(":")) fail(peek().pos, "unsupported slice step");
          auto s = make(Expr::Kind::slice, pos);
          adopt(*s, std::move(e));
          adopt(*s, std::move(start));
          adopt(*s, std::move(stop));
          e = std::move(s);
        } else {
          if (is_op(",")) fail(peek().pos, "unsupported tuple subscript");
          e = make(Expr::Kind::item, pos, std::move(e), std::move(start));
        }
        expect_op("]");
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    const std::size_t pos = peek().pos;
    auto c = make(Expr::Kind::call, pos, std::move(callee));
    for (auto& arg : parse_call_args()) adopt(*c, std::move(arg));
    return c;
  }

  ExprPtr parse_filters_and_tests(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        next();
        const Token& name = expect_name("a filter name");
        auto f = make(Expr::Kind::filter, name.pos, std::move(e));
        f->name = name.value;
        if (is_op("("))
          for (auto& arg : parse_call_args()) adopt(*f, std::move(arg));
        e = std::move(f);
      } else if (is_name("is")) {
        next();
        const bool negated = is_name("not") ? (next(), true) : false;
        const Token& name = expect_name("a test name");
        auto t = make(Expr::Kind::test, name.pos, std::move(e));
        t->name = name.value;
        t->negated = negated;
        if (is_op("(")) fail(peek().pos, fmt::format("unsupported argument of the test '{}'", brief_text(name.value)));
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> tokens_;
  const Positions& at_;
  std::size_t pos_ = 0;
  int depth_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Rendering

class Renderer {
 public:
  Renderer(const Positions& at, Dict globals) : at_(at) { scopes_.push_back(std::move(globals)); }

  std::string run(const std::vector<Node>& nodes) {
    execute(nodes);
    return std::move(out_);
  }

 private:
  [[noreturn]] void fail(std::size_t pos, const std::string& message) const { fail_at(at_, pos, message); }

  void charge(std::uint64_t units, std::size_t pos) {
    work_ += units;
    if (work_ > kMaxWork)
      fail(pos, fmt::format("takes more work than the renderer allows ({} MiB of text made or copied, or steps)",
                            kMaxWork >> 20));
  }
  // Copying list items: each a step, plus the text a string item copies.
  void charge_copy(List::const_iterator begin, List::const_iterator end, std::size_t pos) {
    std::uint64_t units = 0;
    for (auto it = begin; it != end; ++it) units += kStepCost + it->string.size();
    charge(units, pos);
  }

  void check_size(std::size_t bytes, std::size_t pos) const {
    if (bytes > kMaxText) fail(pos, fmt::format("makes more than {} MiB of text", kMaxText >> 20));
  }

  void emit(const std::string& s, std::size_t pos) {
    check_size(out_.size() + s.size(), pos);
    out_ += s;
  }

  void execute(const std::vector<Node>& nodes) {
    for (const Node& node : nodes) {
      switch (node.kind) {
        case Node::Kind::text: emit(node.text, node.pos); break;
        case Node::Kind::output: emit(to_text(eval(*node.expr), node.expr->pos), node.pos); break;
        case Node::Kind::set: scopes_.back()[node.text] = eval(*node.expr); break;
        case Node::Kind::if_: {
          std::size_t taken = node.conditions.size();
          for (std::size_t i = 0; i < node.conditions.size() && taken == node.conditions.size(); ++i)
            if (truthy(eval(*node.conditions[i]))) taken = i;
          if (taken < node.bodies.size()) execute(node.bodies[taken]);
          break;
        }
        case Node::Kind::for_: run_for(node); break;
      }
    }
  }

  // Each iteration runs in a fresh scope: what the body sets is gone afterwards (Jinja's scoping).
  void run_for(const Node& node) {
    const Value iterable = eval(*node.expr);
    List items;
    switch (iterable.type) {
      case Value::Type::list:
        charge_copy(iterable.list->begin(), iterable.list->end(), node.expr->pos);
        items = *iterable.list;
        break;
      case Value::Type::string:
        charge(iterable.string.size() * kStepCost, node.expr->pos);  // at most one item per byte
        for (const std::string_view cp : code_points(iterable.string)) items.push_back(Value::of(std::string(cp)));
        break;
      case Value::Type::undefined: break;  // Jinja iterates an undefined value as empty
      case Value::Type::dict: fail(node.expr->pos, "unsupported loop over a dict");
      default: fail(node.expr->pos, fmt::format("'{}' object is not iterable", type_name(iterable)));
    }
    if (items.empty()) {
      if (node.bodies.size() > 1) execute(node.bodies[1]);
      return;
    }
    const auto n = static_cast<std::int64_t>(items.size());
    // One loop object, updated in place: making its nine entries anew was most of an iteration's
    // cost (a million iterations took seconds). It is copied if the body kept a reference to it.
    auto loop = std::make_shared<Dict>();
    for (std::int64_t i = 0; i < n; ++i) {
      if (++iterations_ > kMaxIterations) fail(node.pos, fmt::format("runs more than {} loop iterations", kMaxIterations));
      charge(kStepCost, node.pos);
      if (loop.use_count() > 1) loop = std::make_shared<Dict>(*loop);
      Dict& l = *loop;
      l["index"] = Value::of(i + 1);
      l["index0"] = Value::of(i);
      l["first"] = Value::of(i == 0);
      l["last"] = Value::of(i == n - 1);
      l["length"] = Value::of(n);
      l["revindex"] = Value::of(n - i);
      l["revindex0"] = Value::of(n - i - 1);
      l["previtem"] = i > 0 ? items[std::size_t(i - 1)] : Value::undefined("there is no previous item");
      l["nextitem"] = i + 1 < n ? items[std::size_t(i + 1)] : Value::undefined("there is no next item");
      scopes_.push_back(Dict{{node.text, items[std::size_t(i)]}, {"loop", Value::of(std::shared_ptr<const Dict>(loop))}});
      execute(node.bodies[0]);
      scopes_.pop_back();
    }
  }

  const Value* lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
      if (const auto found = it->find(name); found != it->end()) return &found->second;
    return nullptr;
  }

  // str(value) as Jinja prints it.
  std::string to_text(const Value& v, std::size_t pos) const {
    switch (v.type) {
      case Value::Type::undefined: return "";
      case Value::Type::none: return "None";
      case Value::Type::boolean: return v.boolean ? "True" : "False";
      case Value::Type::integer: return std::to_string(v.integer);
      case Value::Type::string: return v.string;
      default: fail(pos, fmt::format("unsupported printing of a {}", type_name(v)));
    }
  }

  [[noreturn]] void fail_undefined(const Value& v, std::size_t pos) const { fail(pos, v.string); }

  const std::string& need_string(const Value& v, std::size_t pos, const char* what) const {
    if (v.is(Value::Type::undefined)) fail_undefined(v, pos);
    if (!v.is(Value::Type::string)) fail(pos, fmt::format("{} needs a string, not '{}'", what, type_name(v)));
    return v.string;
  }

  std::string ascii_case(const std::string& s, bool upper, std::size_t pos) const {
    std::string out = s;
    for (char& c : out) {
      if (static_cast<unsigned char>(c) >= 0x80) fail(pos, "unsupported case mapping of non-ASCII text");
      c = static_cast<char>(upper ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
  }

  Value eval(const Expr& e) {
    charge(kStepCost, e.pos);
    Value v = evaluate(e);
    charge(v.string.size(), e.pos);  // a string made or copied (undefined's reason, too)
    return v;
  }

  Value evaluate(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::literal: return e.value;
      case Expr::Kind::list: {
        List items;
        for (const auto& child : e.children) items.push_back(eval(*child));
        Value list = Value::of(std::move(items));
        // [x] around x again and again ({% set x = [x] %} repeated) would nest without end.
        if (list.depth > kMaxDepth) fail(e.pos, fmt::format("makes lists nested more than {} deep", kMaxDepth));
        return list;
      }
      case Expr::Kind::name: {
        if (const Value* v = lookup(e.name)) return *v;
        return Value::undefined(fmt::format("'{}' is undefined", brief_text(e.name)));
      }
      case Expr::Kind::attribute: return attribute(eval(*e.children[0]), e.name, e.pos);
      case Expr::Kind::item: return item(eval(*e.children[0]), eval(*e.children[1]), e.pos);
      case Expr::Kind::slice: return slice(e);
      case Expr::Kind::call: return call(e);
      case Expr::Kind::filter: return filter(e);
      case Expr::Kind::test: return Value::of(test(e) != e.negated);
      case Expr::Kind::negate:
      case Expr::Kind::plus: {
        const Value v = eval(*e.children[0]);
        if (v.is(Value::Type::undefined)) fail_undefined(v, e.pos);
        if (!v.is_number()) fail(e.pos, fmt::format("bad operand type for unary {}: '{}'", e.kind == Expr::Kind::negate ? '-' : '+', type_name(v)));
        if (e.kind == Expr::Kind::plus) return Value::of(v.number());
        if (v.number() == std::numeric_limits<std::int64_t>::min()) fail(e.pos, "integer overflow");
        return Value::of(-v.number());
      }
      case Expr::Kind::not_: return Value::of(!truthy(eval(*e.children[0])));
      case Expr::Kind::and_: {  // Python's: the deciding operand, not a bool
        Value a = eval(*e.children[0]);
        return truthy(a) ? eval(*e.children[1]) : a;
      }
      case Expr::Kind::or_: {
        Value a = eval(*e.children[0]);
        return truthy(a) ? a : eval(*e.children[1]);
      }
      case Expr::Kind::binary: return binary(e.name, eval(*e.children[0]), eval(*e.children[1]), e.pos);
      case Expr::Kind::compare: {
        Value left = eval(*e.children[0]);
        for (std::size_t i = 0; i < e.ops.size(); ++i) {  // chained like Python: a < b < c
          Value right = eval(*e.children[i + 1]);
          if (!compare(e.ops[i], left, right, e.children[i + 1]->pos)) return Value::of(false);
          left = std::move(right);
        }
        return Value::of(true);
      }
      case Expr::Kind::condition:
        if (truthy(eval(*e.children[1]))) return eval(*e.children[0]);
        return e.children[2] ? eval(*e.children[2]) : Value::undefined("the condition was false and there is no else");
    }
    fail(e.pos, "unknown expression");
  }

  Value attribute(const Value& obj, const std::string& name, std::size_t pos) const {
    if (obj.is(Value::Type::undefined)) fail_undefined(obj, pos);
    if (obj.is(Value::Type::dict))
      if (const auto it = obj.dict->find(name); it != obj.dict->end()) return it->second;
    return Value::undefined(fmt::format("'{}' object has no attribute '{}'", type_name(obj), brief_text(name)));
  }

  // Python's index rules: negative counts from the end; out of range is undefined in Jinja.
  static std::optional<std::size_t> index_in(std::int64_t i, std::size_t size) {
    if (i < 0) i += static_cast<std::int64_t>(size);
    if (i < 0 || static_cast<std::size_t>(i) >= size) return std::nullopt;
    return static_cast<std::size_t>(i);
  }

  Value item(const Value& obj, const Value& key, std::size_t pos) const {
    if (obj.is(Value::Type::undefined)) fail_undefined(obj, pos);
    const auto missing = [&] {
      return Value::undefined(fmt::format("'{}' object has no element {}", type_name(obj),
                                          key.is(Value::Type::string) ? "'" + brief_text(key.string) + "'" : to_text_or_type(key)));
    };
    if (obj.is(Value::Type::dict)) {
      if (!key.is(Value::Type::string)) return missing();
      const auto it = obj.dict->find(key.string);
      return it == obj.dict->end() ? missing() : it->second;
    }
    if (!key.is_number()) return missing();
    if (obj.is(Value::Type::list)) {
      const auto i = index_in(key.number(), obj.list->size());
      return i ? (*obj.list)[*i] : missing();
    }
    if (obj.is(Value::Type::string)) {
      const auto cps = code_points(obj.string);
      const auto i = index_in(key.number(), cps.size());
      return i ? Value::of(std::string(cps[*i])) : missing();
    }
    return missing();
  }

  std::string to_text_or_type(const Value& v) const {
    return v.is_number() || v.is(Value::Type::none) ? to_text(v, 0) : type_name(v);
  }

  Value slice(const Expr& e) {
    const Value obj = eval(*e.children[0]);
    if (obj.is(Value::Type::undefined)) fail_undefined(obj, e.pos);
    const auto bound = [&](const ExprPtr& x) -> std::optional<std::int64_t> {
      if (!x) return std::nullopt;
      const Value v = eval(*x);
      if (v.is(Value::Type::none)) return std::nullopt;
      if (!v.is_number()) fail(x->pos, "slice indices must be integers or none");
      return v.number();
    };
    const std::optional<std::int64_t> start = bound(e.children[1]), stop = bound(e.children[2]);
    const auto range = [&](std::size_t size) {  // Python's clamping of slice bounds
      const auto n = static_cast<std::int64_t>(size);
      const auto clamp = [n](std::int64_t i) { return std::clamp(i < 0 ? i + n : i, std::int64_t(0), n); };
      const std::int64_t a = start ? clamp(*start) : 0, b = stop ? clamp(*stop) : n;
      return std::make_pair(std::size_t(a), std::size_t(std::max(a, b)));
    };
    if (obj.is(Value::Type::list)) {
      const auto [a, b] = range(obj.list->size());
      const auto begin = obj.list->begin() + std::ptrdiff_t(a), end = obj.list->begin() + std::ptrdiff_t(b);
      charge_copy(begin, end, e.pos);
      return Value::of(List(begin, end));
    }
    if (obj.is(Value::Type::string)) {
      const auto cps = code_points(obj.string);
      const auto [a, b] = range(cps.size());
      std::string out;
      for (std::size_t i = a; i < b; ++i) out += cps[i];
      return Value::of(std::move(out));
    }
    fail(e.pos, fmt::format("'{}' object cannot be sliced", type_name(obj)));
  }

  std::vector<Value> eval_args(const Expr& e, std::size_t first) {
    std::vector<Value> args;
    for (std::size_t i = first; i < e.children.size(); ++i) args.push_back(eval(*e.children[i]));
    return args;
  }

  void arity(const std::vector<Value>& args, std::size_t least, std::size_t most, const std::string& what,
             std::size_t pos) const {
    if (args.size() < least || args.size() > most)
      fail(pos, fmt::format("{} takes {} argument{}, not {}", what,
                            least == most ? std::to_string(least) : fmt::format("{} to {}", least, most),
                            most == 1 ? "" : "s", args.size()));
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.children[0];
    std::vector<Value> args = eval_args(e, 1);
    if (callee.kind == Expr::Kind::name && !lookup(callee.name)) {
      if (callee.name == "raise_exception") {
        arity(args, 1, 1, "raise_exception()", e.pos);
        throw Error(fmt::format("chat template raised an exception at {}: {}", at_(callee.pos),
                                brief_text(to_text(args[0], e.pos), 400)));
      }
      fail(callee.pos, fmt::format("unsupported function '{}'", brief_text(callee.name)));
    }
    if (callee.kind != Expr::Kind::attribute) fail(e.pos, "unsupported call (only raise_exception and string methods are callable)");
    const Value obj = eval(*callee.children[0]);
    const std::string& method = callee.name;
    if (obj.is(Value::Type::undefined)) fail_undefined(obj, callee.pos);
    if (obj.is(Value::Type::dict) && method == "get") {
      arity(args, 1, 2, "get()", e.pos);
      const Value v = args[0].is(Value::Type::string) ? attribute(obj, args[0].string, e.pos) : Value();
      return v.is(Value::Type::undefined) ? (args.size() > 1 ? args[1] : Value::none()) : v;
    }
    if (!obj.is(Value::Type::string))
      fail(callee.pos, fmt::format("unsupported method '{}' of a {}", brief_text(method), type_name(obj)));
    const std::string& s = obj.string;
    const auto string_arg = [&](std::size_t i) -> const std::string& { return need_string(args[i], e.pos, method.c_str()); };
    if (method == "strip" || method == "lstrip" || method == "rstrip") {
      arity(args, 0, 1, method + "()", e.pos);
      std::optional<std::string> chars;
      if (!args.empty() && !args[0].is(Value::Type::none)) chars = string_arg(0);
      return Value::of(std::string(strip(s, method != "rstrip", method != "lstrip", chars)));
    }
    if (method == "startswith" || method == "endswith") {
      arity(args, 1, 1, method + "()", e.pos);
      const std::string& affix = string_arg(0);
      const bool start = method == "startswith";
      return Value::of(affix.size() <= s.size() &&
                       s.compare(start ? 0 : s.size() - affix.size(), affix.size(), affix) == 0);
    }
    if (method == "lower" || method == "upper") {
      arity(args, 0, 0, method + "()", e.pos);
      return Value::of(ascii_case(s, method == "upper", e.pos));
    }
    if (method == "replace") {
      arity(args, 2, 2, "replace()", e.pos);
      const std::string &from = string_arg(0), &to = string_arg(1);
      if (from.empty()) fail(e.pos, "unsupported replace() of an empty string");
      std::string out;
      for (std::size_t at = 0;;) {
        const std::size_t found = find_text(s, from, at);
        out.append(s, at, found == std::string::npos ? std::string::npos : found - at);
        check_size(out.size(), e.pos);
        if (found == std::string::npos) break;
        out += to;
        at = found + from.size();
      }
      return Value::of(std::move(out));
    }
    if (method == "split") {
      arity(args, 1, 1, "split()", e.pos);
      const std::string& sep = string_arg(0);
      if (sep.empty()) fail(e.pos, "empty separator");
      List parts;
      for (std::size_t at = 0;;) {
        const std::size_t found = find_text(s, sep, at);
        if (parts.size() == kMaxListItems) fail(e.pos, fmt::format("makes a list of more than {} items", kMaxListItems));
        charge(kStepCost, e.pos);
        parts.push_back(Value::of(s.substr(at, found == std::string::npos ? std::string::npos : found - at)));
        if (found == std::string::npos) break;
        at = found + sep.size();
      }
      return Value::of(std::move(parts));
    }
    fail(callee.pos, fmt::format("unsupported method '{}' of a str", brief_text(method)));
  }

  Value filter(const Expr& e) {
    const Value v = eval(*e.children[0]);
    std::vector<Value> args = eval_args(e, 1);
    const std::string& name = e.name;
    const auto soft_text = [&] { return to_text(v, e.pos); };  // undefined prints as ''
    if (name == "trim") {
      arity(args, 0, 1, "the filter 'trim'", e.pos);
      std::optional<std::string> chars;
      if (!args.empty() && !args[0].is(Value::Type::none)) chars = need_string(args[0], e.pos, "trim");
      return Value::of(std::string(strip(soft_text(), true, true, chars)));
    }
    if (name == "length" || name == "count") {
      arity(args, 0, 0, "the filter 'length'", e.pos);
      switch (v.type) {
        case Value::Type::undefined: return Value::of(std::int64_t(0));
        case Value::Type::string: return Value::of(std::int64_t(code_points(v.string).size()));
        case Value::Type::list: return Value::of(std::int64_t(v.list->size()));
        case Value::Type::dict: return Value::of(std::int64_t(v.dict->size()));
        default: fail(e.pos, fmt::format("object of type '{}' has no len()", type_name(v)));
      }
    }
    if (name == "lower" || name == "upper") {
      arity(args, 0, 0, "the filter '" + name + "'", e.pos);
      return Value::of(ascii_case(soft_text(), name == "upper", e.pos));
    }
    if (name == "string") {
      arity(args, 0, 0, "the filter 'string'", e.pos);
      return Value::of(soft_text());
    }
    if (name == "default" || name == "d") {
      arity(args, 0, 2, "the filter 'default'", e.pos);
      const bool use_default = v.is(Value::Type::undefined) || (args.size() > 1 && truthy(args[1]) && !truthy(v));
      return use_default ? (args.empty() ? Value::of(std::string()) : args[0]) : v;
    }
    if (name == "join") {
      arity(args, 0, 1, "the filter 'join'", e.pos);
      if (!v.is(Value::Type::list)) fail(e.pos, fmt::format("unsupported join of a {}", type_name(v)));
      const std::string sep = args.empty() ? std::string() : need_string(args[0], e.pos, "join");
      charge(v.list->size() * kStepCost, e.pos);
      std::string out;
      for (std::size_t i = 0; i < v.list->size(); ++i) {
        if (i) out += sep;
        out += to_text((*v.list)[i], e.pos);
        check_size(out.size(), e.pos);
      }
      return Value::of(std::move(out));
    }
    fail(e.pos, fmt::format("unsupported filter '{}'", brief_text(name)));
  }

  bool test(const Expr& e) {
    const Value v = eval(*e.children[0]);
    const std::string& name = e.name;
    if (name == "defined") return !v.is(Value::Type::undefined);
    if (name == "undefined") return v.is(Value::Type::undefined);
    if (name == "none") return v.is(Value::Type::none);
    if (name == "string") return v.is(Value::Type::string);
    if (name == "number") return v.is_number();
    if (name == "integer") return v.is(Value::Type::integer);
    if (name == "boolean") return v.is(Value::Type::boolean);
    if (name == "true") return v.is(Value::Type::boolean) && v.boolean;
    if (name == "false") return v.is(Value::Type::boolean) && !v.boolean;
    if (name == "mapping") return v.is(Value::Type::dict);
    if (name == "sequence" || name == "iterable")
      return v.is(Value::Type::string) || v.is(Value::Type::list) || v.is(Value::Type::dict);
    if (name == "odd" || name == "even") {
      if (v.is(Value::Type::undefined)) fail_undefined(v, e.pos);
      if (!v.is_number()) fail(e.pos, fmt::format("the test '{}' needs a number, not '{}'", name, type_name(v)));
      return (v.number() % 2 != 0) == (name == "odd");
    }
    fail(e.pos, fmt::format("unsupported test '{}'", brief_text(name)));
  }

  // Python's ==, charging each value it compares: lists can hold one shared list many times, so
  // a comparison can visit far more values than were ever made.
  bool equals(const Value& a, const Value& b, std::size_t pos) {
    charge(kStepCost, pos);
    if (a.is_number() && b.is_number()) return a.number() == b.number();
    if (a.type != b.type) return false;
    const auto same = [&](const Value& x, const Value& y) { return equals(x, y, pos); };
    switch (a.type) {
      case Value::Type::undefined:
      case Value::Type::none: return true;
      case Value::Type::string:
        charge(std::min(a.string.size(), b.string.size()), pos);
        return a.string == b.string;
      case Value::Type::list:
        return a.list->size() == b.list->size() && std::equal(a.list->begin(), a.list->end(), b.list->begin(), same);
      case Value::Type::dict:
        return a.dict->size() == b.dict->size() &&
               std::equal(a.dict->begin(), a.dict->end(), b.dict->begin(),
                          [&](const auto& x, const auto& y) { return x.first == y.first && same(x.second, y.second); });
      default: return false;
    }
  }

  bool compare(const std::string& op, const Value& a, const Value& b, std::size_t pos) {
    if (op == "==") return equals(a, b, pos);
    if (op == "!=") return !equals(a, b, pos);
    if (op == "in" || op == "not in") return contains(b, a, pos) == (op == "in");
    for (const Value* v : {&a, &b})
      if (v->is(Value::Type::undefined)) fail_undefined(*v, pos);
    int order = 0;
    if (a.is_number() && b.is_number())
      order = a.number() < b.number() ? -1 : a.number() > b.number() ? 1 : 0;
    else if (a.is(Value::Type::string) && b.is(Value::Type::string))
      order = a.string.compare(b.string);  // UTF-8 byte order is code point order
    else
      fail(pos, fmt::format("'{}' not supported between instances of '{}' and '{}'", op, type_name(a), type_name(b)));
    if (op == "<") return order < 0;
    if (op == ">") return order > 0;
    if (op == "<=") return order <= 0;
    return order >= 0;
  }

  bool contains(const Value& container, const Value& needle, std::size_t pos) {
    switch (container.type) {
      case Value::Type::string:
        if (!needle.is(Value::Type::string))
          fail(pos, fmt::format("'in <string>' requires string as left operand, not {}", type_name(needle)));
        return find_text(container.string, needle.string, 0) != std::string_view::npos;
      case Value::Type::list:
        return std::any_of(container.list->begin(), container.list->end(), [&](const Value& x) { return equals(x, needle, pos); });
      case Value::Type::dict: return needle.is(Value::Type::string) && container.dict->count(needle.string) > 0;
      case Value::Type::undefined: fail_undefined(container, pos);
      default: fail(pos, fmt::format("argument of type '{}' is not iterable", type_name(container)));
    }
  }

  Value binary(const std::string& op, const Value& a, const Value& b, std::size_t pos) {
    if (op == "~") {  // always text; undefined is ''
      std::string s = to_text(a, pos) + to_text(b, pos);
      check_size(s.size(), pos);
      return Value::of(std::move(s));
    }
    for (const Value* v : {&a, &b})
      if (v->is(Value::Type::undefined)) fail_undefined(*v, pos);
    const auto unsupported = [&]() -> Value {
      fail(pos, fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
    };
    if (a.is_number() && b.is_number()) {
      const std::int64_t x = a.number(), y = b.number();
      std::int64_t r = 0;
      bool overflow = false;
      if (op == "+") overflow = __builtin_add_overflow(x, y, &r);
      else if (op == "-") overflow = __builtin_sub_overflow(x, y, &r);
      else if (op == "*") overflow = __builtin_mul_overflow(x, y, &r);
      else if (op == "//" || op == "%") {
        if (y == 0) fail(pos, "integer division or modulo by zero");
        std::int64_t q = 0, m = 0;
        if (y == -1) {  // C++'s min / -1 and min % -1 trap; Python's min % -1 is 0, min // -1 is 2^63
          if (op == "//" && x == std::numeric_limits<std::int64_t>::min()) fail(pos, "integer overflow");
          q = op == "//" ? -x : 0;
        } else {
          q = x / y;
          m = x % y;
          if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors; m + y cannot overflow (opposite signs)
            --q;
            m += y;
          }
        }
        r = op == "//" ? q : m;
      } else if (op == "/") {
        fail(pos, "unsupported '/' (it makes a float; use '//')");
      } else {
        fail(pos, fmt::format("unsupported operator '{}'", op));
      }
      if (overflow) fail(pos, "integer overflow");
      return Value::of(r);
    }
    if (op == "+" && a.is(Value::Type::string) && b.is(Value::Type::string)) {
      check_size(a.string.size() + b.string.size(), pos);
      return Value::of(a.string + b.string);
    }
    if (op == "+" && a.is(Value::Type::list) && b.is(Value::Type::list)) {
      if (a.list->size() + b.list->size() > kMaxListItems) fail(pos, fmt::format("makes a list of more than {} items", kMaxListItems));
      charge_copy(a.list->begin(), a.list->end(), pos);
      charge_copy(b.list->begin(), b.list->end(), pos);
      List items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return Value::of(std::move(items));
    }
    if (op == "*" && (a.is(Value::Type::string) || b.is(Value::Type::string)) && (a.is_number() || b.is_number())) {
      const std::string& s = a.is(Value::Type::string) ? a.string : b.string;
      // An empty string stays empty: no loop of up to 2^63 appends of nothing.
      const std::int64_t times = s.empty() ? 0 : std::max<std::int64_t>(0, a.is_number() ? a.number() : b.number());
      if (times > 0 && s.size() > kMaxText / static_cast<std::uint64_t>(times)) check_size(kMaxText + 1, pos);
      std::string out;
      for (std::int64_t i = 0; i < times; ++i) out += s;
      return Value::of(std::move(out));
    }
    return unsupported();
  }

  const Positions& at_;
  std::vector<Dict> scopes_;
  std::string out_;
  std::uint64_t iterations_ = 0;
  std::uint64_t work_ = 0;
};

// Jinja reads templates with universal newlines and drops one trailing newline
// (keep_trailing_newline is off).
std::string normalize_source(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (std::size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

void check_utf8(std::string_view s, const std::string& what, bool usage) {
  if (utf8_decode_replace(s) == s) return;
  if (usage) throw UsageError(fmt::format("{} is not valid UTF-8", what));
  throw Error(fmt::format("{} is not valid UTF-8", what));
}

}  // namespace

std::string render_chat_template(std::string_view source, const ChatTemplateInput& input) {
  if (source.size() > kMaxSourceBytes)
    throw Error(fmt::format("chat template: {} bytes, more than the {} this renderer reads", source.size(), kMaxSourceBytes));
  check_utf8(source, "chat template", false);
  List messages;
  for (const ChatMessage& m : input.messages) {
    check_utf8(m.role, "a chat message's role", true);
    check_utf8(m.content, "a chat message's content", true);
    messages.push_back(Value::of(Dict{{"role", Value::of(m.role)}, {"content", Value::of(m.content)}}));
  }
  Dict globals{{"messages", Value::of(std::move(messages))},
               {"add_generation_prompt", Value::of(input.add_generation_prompt)}};
  for (const auto& [name, text] : input.special_tokens) {
    check_utf8(text, "the special token '" + brief_text(name) + "'", false);  // any JSON key: escaped, cut
    globals[name] = Value::of(text);
  }
  const std::string normalized = normalize_source(source);
  const Positions at(normalized);
  const std::vector<Node> nodes = Parser(Lexer(normalized, at).run(), at).parse_template();
  return Renderer(at, std::move(globals)).run(nodes);
}

std::string chat_prompt(const Tokenizer& tokenizer, const std::string& content) {
  const ChatConfig& chat = tokenizer.chat_config();
  if (chat.chat_template.empty()) throw UsageError(fmt::format("no chat template: {}", chat.missing_reason));
  ChatTemplateInput input;
  input.messages = {{"user", content}};
  input.special_tokens = chat.special_tokens;
  input.add_generation_prompt = true;
  return render_chat_template(chat.chat_template, input);
}

}  // namespace hooklens
