// Fuzz target: read_llama2c_tokenizer and the tokenizer it makes. The input is a 2-byte
// little-endian length n, n bytes of text to encode, then the tokenizer.bin file (written to a
// scratch directory). The tokenizer must give ids inside its vocabulary that decode, or refuse
// with an Error.
#include "fuzz_util.h"
#include "hooklens/tokenizer.h"

#include <cstdint>
#include <memory>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  if (size < 2) return 0;
  const std::size_t n = std::min<std::size_t>(data[0] | (std::size_t(data[1]) << 8), size - 2);
  const std::string text(reinterpret_cast<const char*>(data) + 2, n);
  dir.write("tokenizer.bin", std::string_view(reinterpret_cast<const char*>(data) + 2 + n, size - 2 - n));

  std::unique_ptr<hooklens::Tokenizer> tok;
  try {
    tok = hooklens::read_llama2c_tokenizer(dir.path() / "tokenizer.bin");
  } catch (const hooklens::Error& e) {
    fuzz::check_refusal(e);
    return 0;
  }
  for (const bool bos : {false, true}) {
    std::vector<std::int64_t> ids;
    try {
      ids = tok->encode(text, bos);
    } catch (const hooklens::Error& e) {  // a byte with neither its character nor its <0xNN> piece
      fuzz::check_refusal(e);
      continue;
    }
    for (const std::int64_t id : ids) {
      if (id < 0 || id >= tok->vocab_size()) fuzz::violated("encode gave an id outside the vocabulary");
      (void)tok->token_string(id);
    }
    (void)tok->decode(ids);
  }
  (void)tok->token_id(text);
  return 0;
}
