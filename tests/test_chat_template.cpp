// The chat-template renderer against Jinja2 itself (Debian's python3-jinja2, set up as
// transformers' apply_chat_template sets it up: trim_blocks, lstrip_blocks, raise_exception),
// byte for byte, on LLaDA's template and on templates written to exercise each construct; and
// its refusals of what it does not implement, and of hostile templates.
#include "resource_bounds.h"
#include "hooklens/chat_template.h"
#include "hooklens/error.h"
#include "hooklens/tokenizer.h"
#include "text_test_util.h"

#include <catch2/catch.hpp>

#include <chrono>

namespace {

using namespace textest;
using hooklens::ChatMessage;
using hooklens::ChatTemplateInput;
using Catch::Matchers::Contains;

// LLaDA-8B-Instruct's chat_template ('\n' are Jinja escapes inside the string literals).
const std::string kLlada =
    R"({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }})";

// Llama 2's, which checks the roles with raise_exception.
const std::string kLlama2 =
    R"({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %})";

// Blocks, loops, tests and filters, laid out on lines so that trim_blocks and lstrip_blocks matter.
const std::string kConstructs = R"({#- a comment that strips what follows -#}
{%- for m in messages %}
  {%- if m.role == 'system' %}
[SYS] {{ m.content | trim }}
  {%- elif m['role'] != 'user' and not (m.role == 'tool') %}
[{{ m.role | upper }} {{ loop.index }}/{{ loop.length }}] {{ m.content }}
  {%- else %}
[USER{{ '*' if loop.first else '' }}{{ '$' if loop.last }}] {{ m.content | length }} chars, rev {{ loop.revindex0 }}/{{ loop.revindex }}
    {% if loop.previtem is defined %}after {{ loop.previtem.role }}{% endif %}

  {%- endif %}
{% endfor %}
{% if add_generation_prompt is defined and add_generation_prompt %}<assistant>{% else %}<no prompt>{% endif %}

{{ undefined_name }}|{{ none is none }}|{{ bos_token is defined }}|{{ missing is not defined }}|{{ messages is iterable }}
)";

// Whitespace control in every form.
const std::string kWhitespace = "Line one\n"
                                "    {% if true %}\n"
                                "    indented text\n"
                                "    {% endif %}\n"
                                "  {%+ if true %}plus keeps{% endif +%}\n"
                                "after\n"
                                "{{- \"  stripped before\" }}\n"
                                "text   {{- ' joined' -}}   more\n"
                                "{% for x in ['a', 'b'] -%}\n"
                                "  {{ x }}\n"
                                "{%- endfor %}\n"
                                "  {# comment #}\n"
                                "\t{#- comment -#}\t\n"
                                "end {{ '}}' }} {{ '{%' }}\n"
                                "\n";

// Expressions: arithmetic as Python does it, comparisons, strings, subscripts, slices, methods.
const std::string kExpressions = R"({{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 + 3 * 4 }} {{ (2 + 3) * 4 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 10 - 2 - 3 }}
{{ 'ab' ~ 1 ~ true ~ none }} {{ 'x' 'y' }} {{ "q\"uote\' \\ \t|\x41\u00e9\101" }} {{ 'a' * 3 }} {{ 'it''s' }}
{{ messages[0].content[1:3] }} {{ messages[-1]['role'] }} {{ messages[1:] | length }} {{ messages[5] is defined }} {{ messages[0].content[-1] }}
{{ 'b' in 'abc' }} {{ 'z' not in 'abc' }} {{ 'user' in ['user', 'x'] }} {{ 'role' in messages[0] }} {{ not 'role' in messages[0] }}
{{ '  pad  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  l'.lstrip() }}|{{ 'r  '.rstrip() }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith('x') }}
{{ 'a,b,c'.split(',') | join('-') }} {{ 'aXbX'.replace('X', 'y') }} {{ '' or 'empty' }} {{ 'a' and 'b' }} {{ 0 or none }}
{{ missing | default('dflt') }} {{ '' | default('dflt', true) }} {{ [1, 2, 3] | length }} {{ 'MiXeD' | lower }}{{ 'MiXeD'.upper() }}
{% set total = 0 %}{% for m in messages %}{% set total = total + 1 %}{% endfor %}{{ total }} {{ loop is defined }}
{{ messages | length > 1 and messages[0].role == 'system' }} {{ messages[0].get('role') }} {{ messages[0].get('nope', 'x') }}
{% for c in 'héllo' %}{{ c }}{{ '.' if not loop.last }}{% else %}never{% endfor %}{% for c in [] %}x{% else %}empty{% endfor %}
{% if false %}a{% elif 0 %}b{% elif [] %}c{% elif 'x' %}d{% else %}e{% endif %} {{ ('a' if false) is defined }} {{ -(3) }} {{ +4 }} {{ true + 1 }}
)";

struct Case {
  std::string name, source;
  std::vector<ChatMessage> messages;
  std::map<std::string, std::string> special_tokens;
  bool add_generation_prompt = true;
};

const std::vector<ChatMessage> kOneUser = {{"user", "  Hi there!\n"}};
const std::vector<ChatMessage> kChat = {{"system", "You are helpful."},
                                        {"user", "What is 2+2?"},
                                        {"assistant", " 4 "},
                                        {"user", "Thanks\n\n"}};
const std::vector<ChatMessage> kNotAlternating = {{"user", "a"}, {"user", "b"}};
const std::vector<ChatMessage> kUnicode = {{"user", "na\xC3\xAFve caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82\n"},
                                           {"user", "\xE2\x80\x83 em-spaced \xE2\x80\x83"}};
const std::map<std::string, std::string> kLladaTokens = {{"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"},
                                                         {"pad_token", "<|endoftext|>"}};
const std::map<std::string, std::string> kLlama2Tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};

std::vector<Case> cases() {
  std::vector<Case> c = {
      {"llada, one message", kLlada, kOneUser, kLladaTokens},
      {"llada, a chat", kLlada, kChat, kLladaTokens},
      {"llada, unicode and Unicode spaces", kLlada, kUnicode, kLladaTokens},
      {"llada, no messages", kLlada, {}, kLladaTokens},
      {"llada, real newlines in the literals", std::string(kLlada).replace(kLlada.find("\\n\\n"), 4, "\n\n"), kChat,
       kLladaTokens},
      {"llada, no bos_token", kLlada, kOneUser, {}},
      {"llama2, a chat", kLlama2, kChat, kLlama2Tokens},
      {"llama2, roles not alternating", kLlama2, kNotAlternating, kLlama2Tokens},
      {"constructs, a chat", kConstructs, kChat, kLladaTokens},
      {"constructs, no generation prompt", kConstructs, kChat, kLladaTokens, false},
      {"constructs, one message", kConstructs, kOneUser, {}},
      {"whitespace control", kWhitespace, kOneUser, {}},
      {"expressions", kExpressions, kChat, {}},
      {"CRLF source, trailing newlines", "a\r\n  {% if true %}\r\nb\rc\r\n  {% endif %}\r\n\r\n", kOneUser, {}},
      {"one trailing newline goes", "x\n", kOneUser, {}},
      {"undefined things", "{{ nope }}[{{ nope is defined }}]{{ messages[0].nope }}{{ nope | trim }}{{ messages[0].nope is defined }}",
       kOneUser, {}},
      {"raise_exception", "a{{ raise_exception('No way: ' ~ messages[0].role) }}b", kOneUser, {}},
      {"undefined in +", "{{ nope + 'x' }}", kOneUser, {}},
      {"attribute of undefined", "{{ nope.attr }}", kOneUser, {}},
      // What fuzzing and review found (tests further down): Python's floor division at the
      // integer limits, an empty string repeated, substring search and strip sets.
      {"integer and string edges",
       "{{ (-9223372036854775807 - 1) % 3 }} {{ (-9223372036854775807 - 1) // 3 }} {{ 7 % -3 }} {{ -7 % -3 }} "
       "{{ 7 // -2 }} {{ (-9223372036854775807 - 1) % -1 }}|{{ '' * 9223372036854775807 }}|{{ 9223372036854775807 * '' }}|"
       "{{ 'aab' in 'aaab' }} {{ '' in 'a' }} {{ 'aXbXXc'.split('X') | join(',') }} {{ 'ababa'.replace('aba', 'x') }} "
       "{{ 'xhxhix'.strip('xh') }} {{ 'cbaabc'.strip('abc') }}|",
       kOneUser, {}},
  };
  return c;
}

std::string render(const Case& c) {
  ChatTemplateInput input;
  input.messages = c.messages;
  input.special_tokens = c.special_tokens;
  input.add_generation_prompt = c.add_generation_prompt;
  return hooklens::render_chat_template(c.source, input);
}

std::string render(const std::string& source, const std::vector<ChatMessage>& messages = kOneUser) {
  return render(Case{"", source, messages, {}});
}

}  // namespace

TEST_CASE("chat templates render as Jinja2 renders them, byte for byte") {
  if (!python_has("jinja2")) {
    test::skip("python3-jinja2 is missing: the comparison with Jinja2 did not run");
    return;
  }
  TempDir dir;
  json in = json::array();
  for (const Case& c : cases()) {
    json messages = json::array();
    for (const auto& m : c.messages) messages.push_back({{"role", m.role}, {"content", m.content}});
    in.push_back({{"template", c.source}, {"messages", messages}, {"special_tokens", c.special_tokens},
                  {"add_generation_prompt", c.add_generation_prompt}});
  }
  write_file(dir / "cases.json", in.dump());
  const int status = run_reference("render_chat_templates.py",
                                   "'" + (dir / "cases.json").string() + "' '" + (dir / "out.json").string() + "'",
                                   dir / "log.txt");
  INFO(read_file(dir / "log.txt"));
  REQUIRE(status == 0);
  const json out = read_json(dir / "out.json");
  REQUIRE(out.size() == cases().size());
  std::size_t rendered = 0, refused = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const Case c = cases()[i];
    INFO("case '" << c.name << "'; Jinja2: " << out[i].dump());
    if (out[i].contains("text")) {
      CHECK(render(c) == out[i]["text"].get<std::string>());
      ++rendered;
    } else {
      // Jinja2 refused it too (raise_exception, undefined values): so must we, with an Error.
      CHECK_THROWS_AS(render(c), hooklens::Error);
      ++refused;
    }
  }
  CHECK(rendered == 15);  // the comparison is not vacuous
  CHECK(refused == 5);
}

TEST_CASE("chat templates: the LLaDA template's text, worked out by hand") {
  ChatTemplateInput input;
  input.messages = {{"user", "  Hi\n"}};
  input.special_tokens = kLladaTokens;
  CHECK(hooklens::render_chat_template(kLlada, input) ==
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
  CHECK(render("{% set x = 1 %}{% for m in messages %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}") == "21");
  CHECK(render("  {% if true %}\nx\n  {% endif %}\ny") == "x\ny");
}

TEST_CASE("chat templates: raise_exception is an Error carrying the template's message") {
  try {
    render("{% if messages | length < 2 %}{{ raise_exception('Need two messages, got ' ~ messages | length) }}{% endif %}");
    FAIL("no exception");
  } catch (const hooklens::UsageError&) {
    FAIL("UsageError");
  } catch (const hooklens::Error& e) {
    CHECK_THAT(e.what(), Contains("Need two messages, got 1") && Contains("line 1, column 34"));
  }
}

TEST_CASE("chat templates: what is not implemented is an Error naming the construct and where") {
  const std::vector<std::pair<std::string, std::vector<std::string>>> refused = {
      {"{% macro m() %}x{% endmacro %}", {"unsupported tag 'macro'", "line 1, column 4"}},
      {"abc\n\n  {{ foo(1) }}", {"unsupported function 'foo'", "line 3, column 6"}},
      {"{{ messages | tojson }}", {"unsupported filter 'tojson'", "line 1, column 15"}},
      {"{% set ns = namespace(found=false) %}", {"unsupported keyword argument"}},
      {"{% set ns = namespace() %}", {"unsupported function 'namespace'"}},
      {"{% set ns.x = 1 %}", {"namespace"}},
      {"{% for a, b in messages %}{% endfor %}", {"tuples"}},
      {"{% for m in messages if m.role %}{% endfor %}", {"loop filter"}},
      {"{{ {'a': 1} }}", {"dict literal"}},
      {"{{ 1.5 }}", {"number literal"}},
      {"{{ 7 / 2 }}", {"'/'"}},
      {"{% raw %}{{ x }}{% endraw %}", {"unsupported tag 'raw'"}},
      {"{% generation %}x{% endgeneration %}", {"unsupported tag 'generation'"}},
      {"{% break %}", {"unsupported tag 'break'"}},
      {"{{ messages[0].items() }}", {"unsupported method 'items'"}},
      {"{{ '\xC3\xA9' | upper }}", {"non-ASCII"}},
      {"{{ messages }}", {"printing of a list"}},
      {"{{ x is divisibleby(3) }}", {"argument of the test"}},
      {"{{ x is prime }}", {"unsupported test 'prime'"}},
      {"{{ messages[::2] }}", {"slice step"}},
      {"{{ x", {"'{{' is not closed", "line 1, column 1"}},
      {"a {# x", {"comment", "not closed"}},
      {"{% if true %}x", {"'{% endif %}' is missing", "line 1, column 4"}},
      {"{% for m in messages %}x{% endif %}", {"unexpected tag 'endif'"}},
      {"{% endfor %}", {"unexpected tag 'endfor'"}},
      {"{{ 'abc }}", {"string literal is not closed"}},
      {"{{ a ) }}", {"unexpected ')'"}},
      {"{{ 1 + }}", {"expected an expression"}},
      {"{{ x @ y }}", {"unexpected character '@'"}},
      {"{{ 99999999999999999999 }}", {"too large"}},
      {"{{ 9223372036854775807 + 1 }}", {"overflow"}},
      {"{{ 1 // 0 }}", {"division"}},
      {"{{ 'a' < 1 }}", {"'<' not supported"}},
      {"{{ 1 + 'a' }}", {"unsupported operand"}},
      {"{% for x in 5 %}{% endfor %}", {"not iterable"}},
  };
  for (const auto& [source, parts] : refused) {
    INFO(source);
    std::vector<std::string> all = parts;
    all.insert(all.begin(), "chat template");
    try {
      render(source);
      FAIL_CHECK("rendered");
    } catch (const hooklens::Error& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find('\n') == std::string::npos);
      for (const auto& part : all) CHECK_THAT(msg, Contains(part));
    }
  }
}

TEST_CASE("chat templates: hostile templates end in an Error, quickly, without a crash") {
  const auto start = std::chrono::steady_clock::now();
  const auto refused = [](const std::string& source, const std::string& part) {
    INFO(source.substr(0, 200));
    CHECK_THROWS_WITH(render(source), Contains(part));
  };
  refused("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}", "nested more than");
  std::string plus = "{{ 1";
  for (int i = 0; i < 100000; ++i) plus += " + 1";
  refused(plus + " }}", "nested more than");
  std::string filters = "{{ 'x'";
  for (int i = 0; i < 100000; ++i) filters += "|trim";
  refused(filters + " }}", "nested more than");
  std::string ifs;
  for (int i = 0; i < 10000; ++i) ifs += "{% if true %}";
  refused(ifs, "nested more than");
  refused(std::string(100000, '{') + std::string(100000, '}'), "");
  std::string loops;
  for (int i = 0; i < 7; ++i) loops += "{% for a" + std::to_string(i) + " in 'abcdefghij' %}";
  for (int i = 0; i < 7; ++i) loops += "{% endfor %}";
  refused(loops, "loop iterations");
  std::string doubling = "{% set s = 'ab' %}";
  for (int i = 0; i < 40; ++i) doubling += "{% set s = s ~ s %}";
  refused(doubling, "MiB of text");
  refused("{{ 'x' * 100000000000 }}", "MiB of text");
  refused("{% for a in 'abcdefghij' %}{% for b in 'abcdefghij' %}{% for c in 'abcdefghijabcdefghij' %}"
          "{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' * 100 }}"
          "{% endfor %}{% endfor %}{% endfor %}",
          "MiB of text");
  refused(std::string(2 << 20, 'x'), "bytes");
  refused("{% set l = [1] %}" + [] {
    std::string s;
    for (int i = 0; i < 30; ++i) s += "{% set l = l + l %}";
    return s;
  }(), "list of more than");
  refused("\xFF{{ x }}", "UTF-8");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30 * test::kSlowdown));
  // Message content that is not UTF-8 is the user's error.
  CHECK_THROWS_AS(render("{{ messages[0].content }}", {{"user", "\xC3"}}), hooklens::UsageError);
}

TEST_CASE("chat_prompt renders a tokenizer's own template for one user message") {
  TempDir dir;
  json vocab = json::object();
  for (int i = 0; i < 256; ++i) vocab[hooklens::gpt2_byte_symbol(static_cast<unsigned char>(i))] = i;
  const json tj = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
                   {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}}};
  write_file(dir / "tokenizer.json", tj.dump());
  CHECK_THROWS_AS(hooklens::chat_prompt(*hooklens::load_hf_tokenizer(dir.path), "Hi"), hooklens::UsageError);
  CHECK_THROWS_WITH(hooklens::chat_prompt(*hooklens::load_hf_tokenizer(dir.path), "Hi"),
                    Contains("no chat template") && Contains("tokenizer_config.json"));
  write_file(dir / "tokenizer_config.json", json{{"bos_token", {{"content", "<B>"}}}, {"chat_template", kLlada}}.dump());
  CHECK(hooklens::chat_prompt(*hooklens::load_hf_tokenizer(dir.path), " Hi ") ==
        "<B><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  // Newer transformers write the template to chat_template.jinja beside the config.
  write_file(dir / "tokenizer_config.json", R"({"bos_token": "<B>"})");
  write_file(dir / "chat_template.jinja", "{{ bos_token }}{{ messages[0].content }}\n");
  CHECK(hooklens::chat_prompt(*hooklens::load_hf_tokenizer(dir.path), "Hi") == "<B>Hi");
}

TEST_CASE("chat templates: what fuzzing and review found ends quickly, rendered right or as an Error") {
  const auto start = std::chrono::steady_clock::now();
  const auto repeat = [](const std::string& s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += s;
    return out;
  };
  const auto refused = [](const std::string& source, const std::string& part) {
    INFO(source.substr(0, 200));
    CHECK_THROWS_WITH(render(source), Contains(part));
  };
  // fuzz_chat_template: a special token named with a NUL byte (any key of tokenizer_config.json)
  // whose text is not UTF-8: the message began with the name, so what() read as empty.
  {
    hooklens::ChatTemplateInput in;
    in.special_tokens[std::string("\0ef_token", 9)] = "\xe2im";
    CHECK_THROWS_WITH(hooklens::render_chat_template("x", in),
                      Catch::Equals("the special token '\\x00ef_token' is not valid UTF-8"));
  }
  // fuzz_chat_template_made: an empty string repeated 2^63 times looped for ever.
  CHECK(render("{{ 9223372036854775807 * '' }}|{{ '' * 9223372036854775807 }}") == "|");
  // Review (UBSan: signed overflow): Python's modulo of the smallest integer.
  CHECK(render("{{ (-9223372036854775807 - 1) % 3 }} {{ (-9223372036854775807 - 1) // 3 }}") ==
        "1 -3074457345618258603");
  // Review (a stack overflow comparing or freeing): {% set l = [l] %} nested lists without end.
  refused("{% set l = [] %}" + repeat("{% set l = [l] %}", 40000) + "{{ l == l }}", "nested more than 64 deep");
  CHECK(render("{% set l = [] %}" + repeat("{% set l = [l] %}", 60) + "{{ l == l }}") == "True");
  // Review: the whitespace after each '-}}' was found by reading the whole rest of the source.
  CHECK(render(repeat("{{- 1 -}} \n", 90000)) == std::string(90000, '1'));
  // Review: bounded loops and output, but unbounded work inside them: a 16 MiB string copied in
  // each of a million iterations, a million iterations of a thousand steps, one string copied
  // into a list 300 times (4.7 GB), a list holding one list twice, 60 levels deep, compared.
  const std::string thousand = "'xxxxxxxxxx' * 100";
  const std::string two_loops = "{% for a in " + thousand + " %}{% for b in " + thousand + " %}";
  refused("{% set x = 'a' * 16000000 %}" + two_loops + "{% if x %}{% endif %}{% endfor %}{% endfor %}", "work");
  refused(two_loops + repeat("{% if false %}{% endif %}", 1000) + "{% endfor %}{% endfor %}", "work");
  refused("{% set x = 'a' * 16000000 %}{% set l = [" + repeat("x, ", 300) + "x] %}", "work");
  refused("{% set l = [1] %}" + repeat("{% set l = [l, l] %}", 60) + "{{ l == l }}", "work");
  // Review: quadratic substring search and strip.
  CHECK(render("{{ ('a' * 8000000 ~ 'b') in ('a' * 16000000) }}") == "False");
  CHECK(render("{{ ('a' * 4000000).strip('b' * 4000000 ~ 'a') }}|") == "|");
  CHECK(render("{{ ('a' * 8000000).split('a' * 4000000 ~ 'b') | length }}") == "1");
  // Review: split made lists of any length; a loop over a long string made every item first.
  refused("{{ ('x' * 200000).split('x') | length }}", "list of more than 131072 items");
  refused("{% for c in 'ab' * 4000000 %}{% endfor %}", "work");
  refused("{% for c in 'ab' * 600000 %}{% endfor %}", "loop iterations");
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30 * test::kSlowdown));
}
