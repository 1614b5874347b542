// `hooklens train` (training/train.h) on a small shape: deterministic at one thread, its loss falls,
// and it writes model directories the adapters load; its refusals.
#include "test_util.h"

#include <hooklens/json_read.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Seconds of training on 2 cores: a 2-layer, d_model 32 model on a small corpus.
const std::string kSmall =
    "--layers 2 --heads 2 --d-model 32 --d-mlp 64 --context 64 --window 8 --sequence 32 --batch 8 --steps 60 "
    "--copy-length 32 --warmup 10 --stories 200 --segment-documents 100 --merges 100 --log-every 20 --threads 1";

void train(const std::string& preset, const fs::path& out, const std::string& extra = "") {
  test::require_hooklens(fmt::format("train --preset {} --out '{}' {} {}", preset, out.string(), kSmall, extra),
                         fs::path(out) += ".log");
}

}  // namespace

TEST_CASE("a short training run is deterministic at one thread, its loss falls, and the adapter loads it", "[train]") {
  test::TempDir tmp;
  const hooklens::PluginRegistry plugins;
  for (const std::string preset : {"toy-neo", "toy-llada"}) {
    SECTION(preset) {
      const fs::path a = tmp.path / "a", b = tmp.path / "b", other_seed = tmp.path / "c";
      train(preset, a);
      train(preset, b);
      train(preset, other_seed, "--seed 2");
      for (const char* file : {"model.safetensors", "config.json", "vocab.json", "merges.txt", "training.json"}) {
        INFO(file);
        CHECK(test::read_file(a / file) == test::read_file(b / file));
      }
      CHECK(test::read_file(a / "model.safetensors") != test::read_file(other_seed / "model.safetensors"));

      const std::string log = test::read_file(fs::path(a) += ".log");
      INFO(log);
      CHECK(log.find("step 20/60  loss ") != std::string::npos);
      CHECK(log.find("tokens/s") != std::string::npos);
      const json record = hooklens::read_json_file(a / "training.json");
      CHECK(record["steps"] == 60);
      CHECK(record["threads"] == 1);
      // From about ln(vocabulary) at the start; 60 steps on this grammar take off well over a nat.
      const double first = record["first_loss"].get<double>(), held_out = record["held_out_loss"].get<double>();
      CHECK(first > 4.5);
      CHECK(held_out < first - 1.0);
      CHECK(record["final_loss"].get<double>() < first - 1.0);

      std::string adapter;
      const auto model = hooklens::open_model(plugins, a, "", {}, &adapter);
      const hooklens::ModelInfo& info = model->info();
      CHECK(info.n_layers == 2);
      CHECK(info.d_model == 32);
      const json config = hooklens::read_json_file(a / "config.json");
      CHECK(info.vocab_size == config["vocab_size"].get<std::int64_t>());
      REQUIRE(model->tokenizer());
      const std::string sentence = "Once upon a time, there was a little cat named Tom.";
      CHECK(model->tokenizer()->decode(model->tokenizer()->encode(sentence, false)) == sentence);
      if (preset == "toy-neo") {
        CHECK(adapter == "gpt_neo");
        CHECK(info.layer_attention ==
              std::vector<hooklens::AttentionKind>{hooklens::AttentionKind::local, hooklens::AttentionKind::causal});
        CHECK(info.window_size == 8);
        CHECK(info.eos_id == info.vocab_size - 1);
      } else {
        CHECK(adapter == "diffusion");
        CHECK(info.layer_attention ==
              std::vector<hooklens::AttentionKind>(2, hooklens::AttentionKind::bidirectional));
        REQUIRE(info.mask_id);
        CHECK(*info.mask_id == info.vocab_size - 1);  // added after <|endoftext|>
        CHECK(info.eos_id == info.vocab_size - 2);
        CHECK(model->tokenizer()->decode({*info.mask_id}) == "<|mdm_mask|>");
      }
    }
  }
}

TEST_CASE("hooklens train refuses bad settings with one line", "[train]") {
  test::TempDir tmp;
  const fs::path log = tmp.path / "log";
  auto refusal = [&](const std::string& args, int expected_status) {
    const int status = test::run_hooklens("train " + args, log);
    const std::string text = test::read_file(log);
    INFO("hooklens train " << args << "\n" << text);
    CHECK(status == expected_status);
    CHECK(text.rfind("hooklens: error: ", 0) == 0);
    return text;
  };
  const std::string out = fmt::format("--out '{}'", (tmp.path / "m").string());
  CHECK(refusal("--preset toy-gpt " + out, 2).find("toy-gpt") != std::string::npos);
  CHECK(refusal("--preset toy-neo " + out + " --heads 3 --d-model 32", 2).find("multiple of the 3 heads") !=
        std::string::npos);
  CHECK(refusal("--preset toy-llada " + out + " --heads 4 --d-model 36", 2).find("even head size") != std::string::npos);
  CHECK(refusal("--preset toy-neo " + out + " --sequence 300", 2).find("fit the context (256)") != std::string::npos);
  CHECK(refusal("--preset toy-llada " + out + " --sequence 129", 2).find("fit the context (128)") != std::string::npos);
  CHECK(refusal("--preset toy-neo " + out + " --learning-rate 1e-3 --min-learning-rate 1e-2", 2).find("learning rate") !=
        std::string::npos);
  CHECK(refusal("--preset toy-neo --out /proc/hooklens-cannot", 1).find("/proc/hooklens-cannot") != std::string::npos);
  CHECK(refusal("--preset toy-neo " + out + " --copy-length 300", 2).find("copy rows (up to 300 tokens)") !=
        std::string::npos);
  CHECK(refusal("--preset toy-neo " + out + " --stories 0 --segment-documents 0", 2).find("at least one document") !=
        std::string::npos);
  CHECK(!fs::exists(tmp.path / "m" / "model.safetensors"));
}

TEST_CASE("hooklens train takes sequences shorter than LLaDA's random-length floor", "[train]") {
  // Every fourth LLaDA batch has a random length from 8 up; with shorter sequences there is none.
  test::TempDir tmp;
  test::require_hooklens(fmt::format("train --preset toy-llada --out '{}' --layers 1 --heads 2 --d-model 16 --d-mlp 16 "
                                     "--context 6 --sequence 6 --steps 8 --stories 20 --segment-documents 5 "
                                     "--merges 20 --log-every 4 --threads 1",
                                     (tmp.path / "m").string()),
                         tmp.path / "log");
  CHECK(hooklens::read_json_file(tmp.path / "m" / "training.json")["sequence"] == 6);
}
