// Fuzz target: render_chat_template on well-formed templates. The input's bytes choose a
// template from the supported Jinja subset (statements, expressions, filters, tests, methods),
// rendered for two messages. Byte mutations of template text (fuzz_chat_template) rarely stay
// well formed; this reaches the renderer's semantics (arithmetic, loops, string and list growth)
// far more often. Set HOOKLENS_FUZZ_PRINT to see the template an input makes.
// The renderer claims bounded nesting, output and loop iterations: run with -timeout and
// -rss_limit_mb (scripts/fuzz.sh) so that a template breaking those claims is reported.
#include "fuzz_chat_util.h"
#include "hooklens/chat_template.h"

#include <cstdint>
#include <initializer_list>

namespace {

// Writes a template chosen by the bytes it reads (zeros once they run out, which ends nesting).
class TemplateMaker {
 public:
  TemplateMaker(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::string body(int depth) {
    std::string out;
    for (int n = pick(4) + 1; n > 0 && depth < 5; --n) out += statement(depth);
    return out;
  }

 private:
  template <std::size_t N>
  const char* choose(const char* const (&options)[N]) {
    return options[pick(N)];
  }
  std::size_t pick(std::size_t n) { return (at_ < size_ ? data_[at_++] : 0) % n; }
  // Opening and closing markers, with or without whitespace control.
  std::string open(const char* tag) { return std::string(tag) + choose({"", "-", "+"}) + " "; }
  std::string close(const char* tag) { return std::string(" ") + choose({"", "-"}) + tag; }
  std::string block(const std::string& inside) { return open("{%") + inside + close("%}"); }

  // Concatenates in order: a braced list is evaluated left to right, unlike a chain of + (the
  // bytes must be read in the same order whatever the compiler, for replays to match).
  static std::string cat(std::initializer_list<std::string> parts) {
    std::string out;
    for (const std::string& p : parts) out += p;
    return out;
  }

  std::string statement(int depth) {
    static const char* const texts[] = {"a", " ", "\n", "  x\n", "\t \n  ", "\xC3\xA9"};
    switch (pick(7)) {
      case 0: return choose(texts);
      case 1: return cat({open("{{"), expr(depth), close("}}")});
      case 2: {
        std::string s = cat({block(cat({"if ", expr(depth)})), body(depth + 1)});
        if (pick(2)) s += cat({block(cat({"elif ", expr(depth)})), body(depth + 1)});
        if (pick(2)) s += cat({block("else"), body(depth + 1)});
        return s + block("endif");
      }
      case 3: {
        std::string s = cat({block(cat({"for ", name(), " in ", expr(depth)})), body(depth + 1)});
        if (pick(2)) s += cat({block("else"), body(depth + 1)});
        return s + block("endfor");
      }
      case 4: return block(cat({"set ", name(), " = ", expr(depth)}));
      case 5: return cat({open("{#"), "c", close("#}")});
      default: return "{{ messages[0]['content'] }}";
    }
  }

  std::string name() { return choose({"x", "y", "m", "message", "messages", "loop", "bos_token", "content"}); }

  std::string expr(int depth) {
    static const char* const literals[] = {"0", "1", "2", "3", "10", "1000", "1000000", "-1", "9223372036854775807",
                                           "''", "'a'", "'ab'", "' x '", "'\\n'", "'\\xe9'", "'\\U0001F642'", "none",
                                           "true", "false", "[]", "[1, 2]", "['a']"};
    static const char* const binary[] = {" + ", " - ", " * ", " // ", " % ", " ~ ", " == ", " != ", " < ", " > ",
                                         " <= ", " >= ", " in ", " not in ", " and ", " or "};
    static const char* const attributes[] = {"role", "content", "index", "index0", "length", "first", "last",
                                             "revindex", "previtem", "nextitem"};
    static const char* const filters[] = {"trim", "length", "count", "upper", "lower", "string", "default('d')",
                                          "default('d', true)", "join", "join(', ')", "trim('x')"};
    static const char* const tests[] = {"defined", "undefined", "none", "string", "number", "integer", "boolean",
                                        "true", "false", "mapping", "sequence", "iterable", "odd", "even"};
    static const char* const methods[] = {"strip()", "lstrip('a')", "rstrip()", "startswith('a')", "endswith('b')",
                                          "lower()", "upper()", "replace('a', 'bb')", "split(' ')", "get('role')",
                                          "get('x', 1)"};
    if (depth >= 6) return choose(literals);
    const int d = depth + 1;
    switch (pick(13)) {
      case 0: return choose(literals);
      case 1: return name();
      case 2: return cat({"(", expr(d), choose(binary), expr(d), ")"});
      case 3: return cat({"[", expr(d), ", ", expr(d), "]"});
      case 4: return cat({choose({"-", "+", "not "}), "(", expr(d), ")"});
      case 5: return cat({expr(d), ".", choose(attributes)});
      case 6: return cat({expr(d), "[", expr(d), "]"});
      case 7: return cat({expr(d), "[", pick(2) ? expr(d) : "", ":", pick(2) ? expr(d) : "", "]"});
      case 8: return cat({"(", expr(d), " | ", choose(filters), ")"});
      case 9: return cat({"(", expr(d), pick(2) ? " is not " : " is ", choose(tests), ")"});
      case 10: return cat({"(", expr(d), ").", choose(methods)});
      case 11: return cat({"(", expr(d), " if ", expr(d), pick(2) ? cat({" else ", expr(d)}) : "", ")"});
      default: return "messages";
    }
  }

  const std::uint8_t* data_;
  std::size_t size_, at_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string source = TemplateMaker(data, size).body(0);
  static const bool print = std::getenv("HOOKLENS_FUZZ_PRINT") != nullptr;
  if (print) std::fprintf(stderr, "template: %s\n", source.c_str());
  hooklens::ChatTemplateInput in;
  in.messages = {{"system", " Be brief. "}, {"user", "Hi\xC3\xA9 a b"}};
  in.special_tokens = {{"bos_token", "<s>"}};
  fuzz::render_checked(source, in);
  return 0;
}
