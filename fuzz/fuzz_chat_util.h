// Shared by the chat-template targets: render, and hold the result to the renderer's promises.
#pragma once

#include "fuzz_util.h"
#include "hooklens/chat_template.h"

#include <string>
#include <string_view>

namespace fuzz {

inline void render_checked(std::string_view source, const hooklens::ChatTemplateInput& in) {
  try {
    const std::string out = hooklens::render_chat_template(source, in);
    if (out.size() > (16u << 20)) violated("more output than the 16 MiB bound");
  } catch (const hooklens::Error& e) {
    check_refusal(e);
  }
}

}  // namespace fuzz
