// Fuzz target: render_chat_template. The input is a template, optionally followed by parts
// (fuzz_util.h): "==> user <==" (any role) adds a message with that role, "==> NAME_token <=="
// sets a special token, "==> no_generation_prompt <==" turns add_generation_prompt off.
// fuzz_chat_template_made complements it with well-formed templates.
// The renderer claims bounded nesting, output and loop iterations: run with -timeout and
// -rss_limit_mb (scripts/fuzz.sh) so that a template breaking those claims is reported.
#include "fuzz_chat_util.h"
#include "hooklens/chat_template.h"

#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view source;
  hooklens::ChatTemplateInput in;
  for (const fuzz::Part& p : fuzz::split_parts(input, "template")) {
    const bool token = p.name.size() > 6 && p.name.compare(p.name.size() - 6, 6, "_token") == 0;
    if (p.name == "template")
      source = p.body;
    else if (p.name == "no_generation_prompt")
      in.add_generation_prompt = false;
    else if (token)
      in.special_tokens[p.name] = std::string(p.body);
    else
      in.messages.push_back({p.name, std::string(p.body)});
  }
  fuzz::render_checked(source, in);
  return 0;
}
