// Fuzz target: config.json through HfConfig, as the adapters read it: the typed getters on the keys
// adapters ask for (integers, numbers, strings, token ids, optional ids), warn_unknown_keys and
// peek_model_type. The input is the file. A getter either returns a value of its contract or
// refuses with a one-line Error.
#include "fuzz_util.h"
#include "hooklens/hf_config.h"

#include <cstdint>

namespace {

const char* const kKeys[] = {"n_layer", "num_hidden_layers", "hidden_size", "n_embd", "vocab_size", "n_head",
                             "num_attention_heads", "rope_theta", "layer_norm_epsilon", "model_type",
                             "bos_token_id", "eos_token_id", "mask_token_id", "max_position_embeddings",
                             "intermediate_size", "rope_scaling", "attention_layers", ""};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDir dir;
  static const bool quiet = (fuzz::check_warnings(), true);
  (void)quiet;
  dir.write("config.json", std::string_view(reinterpret_cast<const char*>(data), size));
  (void)hooklens::peek_model_type(dir.path());
  std::unique_ptr<hooklens::HfConfig> config;
  try {
    config = std::make_unique<hooklens::HfConfig>(dir.path());
  } catch (const hooklens::Error& e) {
    fuzz::check_refusal(e);
    return 0;
  }
  if (!config->json().is_object()) fuzz::violated("HfConfig accepted a config that is not an object");
  for (const char* key : kKeys) {
    (void)config->has(key);
    fuzz::attempt([&] {
      const std::int64_t v = config->integer(key);
      if (v <= 0 || v > INT32_MAX) fuzz::violated("integer() returned a value outside (0, 2^31)");
    });
    fuzz::attempt([&] { (void)config->integer(key, 7); });
    fuzz::attempt([&] { (void)config->number(key, 0.5); });
    fuzz::attempt([&] { (void)config->string(key); });
    fuzz::attempt([&] { (void)config->string(key, "x"); });
    fuzz::attempt([&] {
      if (config->token_id(key) < 0) fuzz::violated("token_id() returned a negative id");
    });
    fuzz::attempt([&] {
      const auto id = config->optional_id(key);
      if (id && *id < 0) fuzz::violated("optional_id() returned a negative id");
    });
  }
  fuzz::attempt([&] { config->warn_unknown_keys({"n_layer", "vocab_size"}); });
  return 0;
}
