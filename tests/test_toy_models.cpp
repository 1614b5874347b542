// The committed toy models (models/toy-neo, models/toy-llada; models/README.md): they are what the
// documented command makes, they fit the size limit, toy-neo has a previous-token head and a later
// induction head, both generate the text models/README.md shows, and retraining each with its
// documented command reproduces its files byte for byte (the [retrain] cases, ctest entries of their own).
#include "test_util.h"

#include <hooklens/json_read.h>

#include <train.h>

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kModels = fs::path(HOOKLENS_SOURCE_DIR) / "models";
const std::string kPrompt = "Once upon a time, there was a little cat named Tom.";

// The generated text of `hooklens generate ARGS` (from its manifest: the decoded new tokens).
std::string generated_text(const test::TempDir& tmp, const std::string& args) {
  const fs::path out = tmp.path / "run";
  test::require_hooklens(fmt::format("generate {} --prompt '{}' --threads 1 --hooks none --out '{}' --overwrite", args,
                                     kPrompt, out.string()),
                         tmp.path / "log");
  const std::string log = test::read_file(tmp.path / "log");
  const std::string marker = "generated: ";
  const auto at = log.find(marker);
  REQUIRE(at != std::string::npos);
  const auto end = log.find("\nrun directory: ", at);
  REQUIRE(end != std::string::npos);
  return log.substr(at + marker.size(), end - at - marker.size());
}

}  // namespace

TEST_CASE("the committed toy models are what the documented training command makes", "[toy_models]") {
  for (const std::string name : {"toy-neo", "toy-llada"}) {
    INFO(name);
    const fs::path dir = kModels / name;
    std::uintmax_t bytes = 0;
    for (const auto& entry : fs::directory_iterator(dir)) bytes += entry.file_size();
    CHECK(bytes <= 5'000'000);
    // training.json records the settings; they must be the preset's, at one thread, for
    // `hooklens train --preset NAME --threads 1` (scripts/train-toy-models.sh) to reproduce the files.
    const hooklens::training::TrainOptions preset = hooklens::training::toy_preset(name);
    const json record = hooklens::read_json_file(dir / "training.json");
    CHECK(record["threads"] == 1);
    CHECK(record["seed"] == preset.seed);
    CHECK(record["steps"] == preset.steps);
    CHECK(record["batch"] == preset.batch);
    CHECK(record["sequence"] == preset.sequence);
    CHECK(record["merges"] == preset.merges);
    CHECK(record["learning_rate"] == preset.learning_rate);
    CHECK(record["min_learning_rate"] == preset.min_learning_rate);
    CHECK(record["warmup_steps"] == preset.warmup_steps);
    CHECK(record["corpus"]["stories"] == preset.stories);
    CHECK(record["corpus"]["segment_documents"] == preset.segment_documents);
    CHECK(record["shape"]["layers"] == preset.shape.layers);
    CHECK(record["shape"]["d_model"] == preset.shape.d_model);
    CHECK(record["shape"]["d_mlp"] == preset.shape.d_mlp);
    CHECK(record["shape"]["context"] == preset.shape.context);
    CHECK(record["held_out_loss"].get<double>() < 0.5 * record["first_loss"].get<double>());
  }
}

TEST_CASE("toy-neo has a previous-token head and a later induction head", "[toy_models]") {
  test::TempDir tmp;
  const fs::path out = tmp.path / "run";
  // `capture` runs head_detectors' extra prompt: 32 random token ids, twice.
  test::require_hooklens(fmt::format("capture --model '{}' --prompt '{}' --threads 1 --hooks 'blocks.*.attn.hook_pattern' "
                                     "--analyze head_detectors --out '{}'",
                                     (kModels / "toy-neo").string(), kPrompt, out.string()),
                         tmp.path / "log");
  const json report = hooklens::read_json_file(out / "reports" / "head_detectors.json");
  int previous_layer = -1;
  double previous_best = 0, induction_best = 0;
  for (const json& head : report["heads"])
    if (head["previous_token_score"].get<double>() > previous_best) {
      previous_best = head["previous_token_score"].get<double>();
      previous_layer = head["layer"].get<int>();
    }
  for (const json& head : report["heads"])
    if (head["layer"].get<int>() > previous_layer)
      induction_best = std::max(induction_best, head["induction_score"].get<double>());
  INFO(report["headline"].dump());
  CHECK(previous_best > 0.9);
  CHECK(induction_best > 0.5);
  // The CLI printed the headline under the report's path.
  const std::string log = test::read_file(tmp.path / "log");
  CHECK(log.find("\n  previous_token: layer " + std::to_string(previous_layer) + " head ") != std::string::npos);
}

TEST_CASE("the toy models generate the text models/README.md shows", "[toy_models]") {
  test::TempDir tmp;
  const std::string readme = test::read_file(kModels / "README.md");
  SECTION("toy-neo, greedy") {
    const std::string text =
        generated_text(tmp, fmt::format("--model '{}' --max-new-tokens 48", (kModels / "toy-neo").string()));
    INFO(text);
    CHECK(readme.find("> " + kPrompt + text.substr(0, text.find('\n'))) != std::string::npos);
    CHECK(text.find("Tom") != std::string::npos);
  }
  SECTION("toy-llada, masked diffusion") {
    const std::string text = generated_text(
        tmp, fmt::format("--model '{}' --gen-length 32 --steps 32", (kModels / "toy-llada").string()));
    INFO(text);
    CHECK(text.find("<|mdm_mask|>") == std::string::npos);
    CHECK(readme.find("> " + kPrompt + text.substr(0, text.find('\n'))) != std::string::npos);
  }
}

// Retrains `name` with its documented command into a temporary directory; every file must be the
// committed one, byte for byte.
namespace {
void require_retraining_reproduces(const std::string& name) {
  test::TempDir tmp;
  test::require_hooklens(fmt::format("train --preset {} --threads 1 --out '{}'", name, (tmp.path / "m").string()),
                         tmp.path / "log");
  for (const char* file : {"config.json", "vocab.json", "merges.txt", "model.safetensors", "training.json"}) {
    INFO(name << "/" << file);
    CHECK(test::read_file(tmp.path / "m" / file) == test::read_file(kModels / name / file));
  }
}
}  // namespace

// Minutes each, so ctest runs them as entries of their own (tests/CMakeLists.txt), side by side.
TEST_CASE("retraining toy-neo with the documented command reproduces the committed files", "[.][retrain][toy-neo]") {
  require_retraining_reproduces("toy-neo");
}

TEST_CASE("retraining toy-llada with the documented command reproduces the committed files", "[.][retrain][toy-llada]") {
  require_retraining_reproduces("toy-llada");
}
