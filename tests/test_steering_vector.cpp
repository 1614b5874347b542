// `hooklens steering-vector` on the committed toy model (models/toy-neo): the written vector against
// the test's own recomputation (forward passes through the adapter, a Recorder on the hook, means in
// float64), its metadata, --positions last, --normalize, --name, and the refusals.
#include "model_util.h"
#include "test_util.h"

#include <hooklens/safetensors.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kToyNeo = fs::path(HOOKLENS_SOURCE_DIR) / "models" / "toy-neo";

// Prompt `ids`' activation at `hook`, [pos, d] in float64.
at::Tensor activation(hooklens::Model& model, const std::string& hook, const std::vector<std::int64_t>& ids) {
  test::Recorder rec({hook});
  model.forward(at::tensor(ids, at::kLong).unsqueeze(0), rec.hooks, {}, nullptr);
  const at::Tensor t = rec.at(hook);
  REQUIRE(t.dim() == 3);
  return t[0].to(at::kDouble);
}

// The mean over prompts of each prompt's mean over its positions (or its last one).
at::Tensor set_mean(hooklens::Model& model, const std::string& hook, const std::vector<std::vector<std::int64_t>>& prompts,
                    bool last) {
  at::Tensor sum = at::zeros({model.info().d_model}, at::kDouble);
  for (const auto& ids : prompts) {
    const at::Tensor a = activation(model, hook, ids);
    sum = sum.size(0) == a.size(1) ? sum : at::zeros({a.size(1)}, at::kDouble);
    sum += last ? a[a.size(0) - 1] : a.mean(0);
  }
  return sum / double(prompts.size());
}

// Runs `hooklens steering-vector ARGS` expecting a usage error (status 2): its first line.
std::string usage_refusal(const std::string& args, const fs::path& log) {
  const int status = test::run_hooklens("steering-vector " + args, log);
  const std::string text = test::read_file(log);
  INFO("hooklens steering-vector " << args << "\n" << text);
  CHECK(status == 2);
  CHECK(text.rfind("hooklens: error: ", 0) == 0);
  return text.substr(0, text.find('\n'));
}

}  // namespace

TEST_CASE("steering-vector writes mean(positive) - mean(negative) of the hook", "[fixtures]") {
  test::TempDir tmp;
  auto model = test::load_model("gpt_neo", kToyNeo);
  REQUIRE(model->tokenizer());
  const hooklens::Tokenizer& tok = *model->tokenizer();
  const std::vector<std::string> positive = {"Tom was happy.", "Ivy liked to play in the park."};
  const std::vector<std::string> negative = {"Tom was sad.", "Sam did not like the rain.", "The dog ran away."};
  const std::vector<std::int64_t> extra = tok.encode("A little cat.");  // one more negative, by ids
  const std::string hook = "blocks.1.hook_resid_post";

  std::string args = fmt::format("steering-vector --model '{}' --hook {} --threads 1", kToyNeo.string(), hook);
  for (const auto& p : positive) args += fmt::format(" --positive '{}'", p);
  for (const auto& n : negative) args += fmt::format(" --negative '{}'", n);
  std::string extra_list;
  for (const auto id : extra) extra_list += (extra_list.empty() ? "" : ",") + std::to_string(id);
  args += " --negative-ids " + extra_list;

  std::vector<std::vector<std::int64_t>> pos_ids, neg_ids;
  for (const auto& p : positive) pos_ids.push_back(tok.encode(p));
  for (const auto& n : negative) neg_ids.push_back(tok.encode(n));
  neg_ids.push_back(extra);

  SECTION("all positions, default name; metadata and the printed norm") {
    const fs::path out = tmp / "all.safetensors";
    test::require_hooklens(args + fmt::format(" --out '{}'", out.string()), tmp / "all.log");
    const auto tensors = hooklens::read_safetensors(out);
    REQUIRE(tensors.size() == 1);
    const at::Tensor v = tensors.at("steering");
    CHECK(v.scalar_type() == at::kFloat);
    REQUIRE(v.sizes().vec() == std::vector<std::int64_t>{model->info().d_model});
    const at::Tensor expected = set_mean(*model, hook, pos_ids, false) - set_mean(*model, hook, neg_ids, false);
    const double diff = (v.to(at::kDouble) - expected).abs().max().item<double>();
    INFO("max |written - recomputed| = " << diff << ", norm " << expected.norm().item<double>());
    CHECK(diff < 1e-6);
    CHECK(expected.norm().item<double>() > 0.1);  // a real difference, not two equal means

    const auto meta = hooklens::read_safetensors_metadata(out);
    CHECK(meta.at("hook") == hook);
    CHECK(meta.at("model") == model->info().path);
    CHECK(meta.at("positions") == "all");
    CHECK(json::parse(meta.at("positive")) == json(positive));
    CHECK(json::parse(meta.at("negative")).size() == 4);
    CHECK(json::parse(meta.at("negative"))[3] == "ids " + extra_list);
    const std::string log = test::read_file(tmp / "all.log");
    CHECK_THAT(log, Catch::Contains(fmt::format("norm {:.6g}", v.norm().item<double>())) &&
                        Catch::Contains("2 positive minus 4 negative prompts") && Catch::Contains(out.string()));
  }
  SECTION("the last position only, normalized, named") {
    const fs::path out = tmp / "last.safetensors";
    test::require_hooklens(args + fmt::format(" --positions last --normalize --name happy --out '{}'", out.string()),
                           tmp / "last.log");
    const at::Tensor v = hooklens::read_safetensors(out).at("happy");
    at::Tensor expected = set_mean(*model, hook, pos_ids, true) - set_mean(*model, hook, neg_ids, true);
    const double norm = expected.norm().item<double>();
    expected = expected / norm;
    CHECK((v.to(at::kDouble) - expected).abs().max().item<double>() < 1e-6);
    CHECK(std::abs(v.norm().item<double>() - 1.0) < 1e-6);
    // Not the all-positions vector scaled: the last position differs.
    const at::Tensor all = set_mean(*model, hook, pos_ids, false) - set_mean(*model, hook, neg_ids, false);
    CHECK((all / all.norm() - expected).abs().max().item<double>() > 1e-3);
    const auto meta = hooklens::read_safetensors_metadata(out);
    CHECK(meta.at("normalized") == "true");
    CHECK(std::abs(std::stod(meta.at("norm_before_normalize")) - norm) < 1e-5 * norm);
  }
  SECTION("the MLP's hidden activations: a vector of d_mlp") {
    const fs::path out = tmp / "mlp.safetensors";
    const std::string mlp = "blocks.0.mlp.hook_post";
    test::require_hooklens(fmt::format("steering-vector --model '{}' --hook {} --positive '{}' --negative '{}' --out '{}'",
                                       kToyNeo.string(), mlp, positive[0], negative[0], out.string()),
                           tmp / "mlp.log");
    const at::Tensor v = hooklens::read_safetensors(out).at("steering");
    REQUIRE(v.size(0) == model->info().d_mlp);
    const at::Tensor expected = activation(*model, mlp, pos_ids[0]).mean(0) - activation(*model, mlp, neg_ids[0]).mean(0);
    CHECK((v.to(at::kDouble) - expected).abs().max().item<double>() < 1e-6);
  }
}

TEST_CASE("steering-vector refuses what it cannot average, in one line", "[fixtures]") {
  test::TempDir tmp;
  const std::string base = fmt::format("--model '{}' --out '{}'", kToyNeo.string(), (tmp / "v.safetensors").string());
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"--hook blocks.9.hook_resid_post --positive a --negative b",
       "--hook 'blocks.9.hook_resid_post' is not a hook point of"},
      {"--hook 'blocks.*.hook_resid_post' --positive a --negative b", "(an exact name, no pattern); valid: "},
      {"--hook blocks.0.attn.hook_z --positive a --negative b",
       "--hook blocks.0.attn.hook_z has dims [batch, pos, head, d_head]: a steering vector needs a hook of dims [batch, pos, X]"},
      {"--hook blocks.0.attn.hook_pattern --positive a --negative b", "has dims [batch, head, query, key]"},
      {"--hook blocks.0.hook_resid_post --negative b", "give at least one --positive TEXT or --positive-ids 1,2,3"},
      {"--hook blocks.0.hook_resid_post --positive a", "give at least one --negative TEXT or --negative-ids 1,2,3"},
      {"--hook blocks.0.hook_resid_post --positive '' --negative b", "--positive '' has no tokens"},
      {"--hook blocks.0.hook_resid_post --positive a --negative-ids 1,x", "--negative-ids '1,x': 'x' is not a token id"},
      {"--hook blocks.0.hook_resid_post --positive a --negative-ids 1,99999", "token id 99999 is outside the vocabulary of 857"},
      {"--hook blocks.0.hook_resid_post --positive a --negative a --normalize", "--normalize: the positive and negative means are equal"},
      {"--hook blocks.0.hook_resid_post --positive a --negative b --positions first", "--positions: first not in {all,last}"},
      {"--hook blocks.0.hook_resid_post --positive a --negative b --name 'a:b'", "--name 'a:b' must be a non-empty tensor name"},
  };
  int n = 0;
  for (const Case& c : cases) {
    const std::string line = usage_refusal(base + " " + c.args, tmp / fmt::format("case{}.log", n++));
    INFO(line);
    CHECK_THAT(line, Catch::Contains(c.message));
  }
  // The unknown hook's refusal lists the valid names, per layer once.
  const std::string line = usage_refusal(base + " --hook nowhere --positive a --negative b", tmp / "valid.log");
  CHECK_THAT(line, Catch::Contains("blocks.{L}.hook_resid_post") && Catch::Contains("blocks.{L}.mlp.hook_post") &&
                       Catch::Contains("hook_embed") && Catch::Contains("({L} = 0..3)"));
  CHECK_THAT(line, !Catch::Contains("hook_pattern") && !Catch::Contains("attn.hook_z"));
  CHECK_FALSE(fs::exists(tmp / "v.safetensors"));  // nothing written by a refusal
  // --out must be a safetensors file.
  CHECK_THAT(usage_refusal(fmt::format("--model '{}' --hook blocks.0.hook_resid_post --positive a --negative b --out v.bin",
                                       kToyNeo.string()), tmp / "out.log"),
             Catch::Contains("--out 'v.bin' must name a .safetensors file"));
}

TEST_CASE("steering-vector is listed and its --help explains what it computes") {
  test::TempDir tmp;
  REQUIRE(test::run_hooklens("--help", tmp / "app.log") == 0);
  CHECK_THAT(test::read_file(tmp / "app.log"), Catch::Contains("steering-vector"));
  REQUIRE(test::run_hooklens("steering-vector --help", tmp / "help.log") == 0);
  const std::string help = test::read_file(tmp / "help.log");
  CHECK_THAT(help, Catch::Contains("Usage: hooklens steering-vector") && Catch::Contains("mean(positive) - mean(negative)") &&
                       Catch::Contains("--positions") && Catch::Contains("[batch, pos, X]") && Catch::Contains("--normalize"));
}
