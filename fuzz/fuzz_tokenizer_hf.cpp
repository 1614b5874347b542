// Fuzz target: load_hf_tokenizer and the tokenizer it makes. The input is split into files
// (fuzz_util.h): the text before any header is tokenizer.json; "==> vocab.json <==",
// "==> merges.txt <==", "==> tokenizer_config.json <==", "==> chat_template.jinja <==" (and
// "==> tokenizer.json <==") give the other files, written to a scratch directory; each
// "==> text <==" is a text to encode (a few fixed ones, and the special tokens' texts, otherwise).
// The tokenizer must give ids inside its vocabulary that decode, or refuse with an Error.
#include "fuzz_util.h"
#include "hooklens/chat_template.h"
#include "hooklens/tokenizer.h"

#include <cstdint>
#include <memory>

namespace {

const char* const kFiles[] = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                              "chat_template.jinja"};

void exercise(const hooklens::Tokenizer& tok, const std::string& text) {
  for (const bool specials : {false, true}) {
    std::vector<std::int64_t> ids;
    try {
      ids = tok.encode(text, specials);
    } catch (const hooklens::Error& e) {  // text that is not UTF-8, a symbol missing from the vocabulary
      fuzz::check_refusal(e);
      return;
    }
    for (const std::int64_t id : ids) {
      if (id < 0 || id >= tok.vocab_size()) fuzz::violated("encode gave an id outside the vocabulary");
      (void)tok.token_string(id);
    }
    (void)tok.decode(ids);
  }
  (void)tok.token_id(text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  for (const char* f : kFiles) dir.remove(f);
  std::vector<std::string> texts;
  for (const fuzz::Part& p : fuzz::split_parts(input, "tokenizer.json")) {
    if (p.name == "text") texts.emplace_back(p.body);
    for (const char* f : kFiles)
      if (p.name == f) dir.write(f, p.body);
  }

  std::unique_ptr<hooklens::Tokenizer> tok;
  try {
    tok = hooklens::load_hf_tokenizer(dir.path());
  } catch (const hooklens::Error& e) {
    fuzz::check_refusal(e);
    return 0;
  }
  if (texts.empty()) {
    texts = {"Hello world, it's 2024!", " \t\n  spaces\r\n", "na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82", ""};
    for (const auto& [name, special] : tok->chat_config().special_tokens) texts.push_back("a" + special + " b " + special);
  }
  for (const std::string& text : texts) exercise(*tok, text);
  if (!tok->chat_config().chat_template.empty()) {
    try {
      (void)hooklens::chat_prompt(*tok, "Hi");
    } catch (const hooklens::Error& e) {
      fuzz::check_refusal(e);
    }
  }
  return 0;
}
