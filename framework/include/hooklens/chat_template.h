// Chat templates: the Jinja that Hugging Face models ship in tokenizer_config.json, rendered as
// transformers' apply_chat_template(messages, tokenize=False) does.
#pragma once
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace hooklens {

class Tokenizer;

struct ChatMessage {
  std::string role, content;
};

struct ChatTemplateInput {
  std::vector<ChatMessage> messages;
  std::map<std::string, std::string> special_tokens;  // "bos_token" -> "<s>", ...; names not here are undefined
  bool add_generation_prompt = true;
};

// Renders `source` with the variables messages, add_generation_prompt and the special tokens, in
// Jinja's semantics with trim_blocks and lstrip_blocks (as transformers' environment has them).
// Only the subset of Jinja that chat templates use is implemented (docs/tokenizers.md); anything
// else is an Error naming the construct and its line and column, and so is the template's own
// raise_exception('...'). Hostile templates end in an Error too: nesting depth, output size and
// loop iterations are bounded.
std::string render_chat_template(std::string_view source, const ChatTemplateInput& input);

// The text of a chat of one user message, `content`, followed by the assistant's turn
// (add_generation_prompt), rendered with `tokenizer`'s chat template and special tokens. Encode it
// with add_special_tokens false, as apply_chat_template does. UsageError when the tokenizer has
// no chat template.
std::string chat_prompt(const Tokenizer& tokenizer, const std::string& content);

}  // namespace hooklens
