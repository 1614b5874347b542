// The logit lens: Model::unembed against the model's own logits, the blocks.L.attn.hook_result hook
// point against hook_attn_out, hook_z and W_O, and the logit_lens analyzer's report against the
// captured logits and a direct logit attribution recomputed here from the checkpoint's tensors.
// Models: the committed toy-neo (GPT-Neo, LayerNorm) and toy-llada (RMSNorm), and the GPT-2 fixture.
#include "model_util.h"
#include "png_util.h"
#include "refusal_util.h"
#include "report_util.h"

#include <hooklens/analysis.h>
#include <hooklens/analyzer.h>
#include <hooklens/drawing.h>
#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/plugin.h>
#include <hooklens/renderer.h>
#include <hooklens/run.h>
#include <hooklens/safetensors.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>

namespace {

using hooklens::Logits;
using nlohmann::json;
namespace fs = std::filesystem;

const fs::path kToyNeo = fs::path(HOOKLENS_SOURCE_DIR) / "models/toy-neo";
const fs::path kToyLlada = fs::path(HOOKLENS_SOURCE_DIR) / "models/toy-llada";
const char* const kText = "Once upon a time, there was a little cat named Tom. Tom";
const char* const kLensHooks =
    "blocks.0.hook_resid_pre,blocks.*.hook_resid_post,blocks.*.attn.hook_result,blocks.*.hook_attn_out,"
    "blocks.*.hook_mlp_out,blocks.*.attn.hook_z,hook_logits";

at::Tensor ids_of(const hooklens::Model& model, const std::string& text) {
  const auto ids = model.tokenizer()->encode(text, /*add_special_tokens=*/false);
  return at::tensor(at::ArrayRef<std::int64_t>(ids), at::kLong).unsqueeze(0);
}

// unembed(final resid_post) against forward's logits, whole sequence (the same ops: bit-equal) and
// one position (forward's matrix-vector path: within rounding).
void check_unembed(hooklens::Model& model, const std::string& text) {
  const int L = model.info().n_layers;
  test::Recorder rec({"*hook_resid_post"});
  const at::Tensor ids = ids_of(model, text);
  const std::int64_t T = ids.size(1);
  REQUIRE(T > 2);
  const at::Tensor logits = model.forward(ids, rec.hooks, {}, nullptr, Logits::all);
  const at::Tensor last = rec.at(fmt::format("blocks.{}.hook_resid_post", L - 1));
  const at::Tensor lens = model.unembed(last);
  CHECK(test::max_abs_diff(lens, logits) < 1e-4);
  CHECK(at::equal(lens, logits));
  CHECK(test::max_abs_diff(model.unembed(last[0][T - 1]), logits[0][T - 1]) < 1e-4);
  // An earlier layer is another distribution: the comparison can fail.
  CHECK(test::max_abs_diff(model.unembed(rec.at("blocks.0.hook_resid_post")), logits) > 1e-2);
}

// What the logit_lens report rests on, recomputed in double from toy-neo's checkpoint: GPT-Neo's
// final LayerNorm (ln_f, eps from config.json) and the tied unembedding (wte).
struct NeoWeights {
  at::Tensor ln_w, ln_b, wte;
  double eps = 0;
  std::vector<at::Tensor> W_o, b_o;  // per layer: out_proj [d_model, d_model], its bias
};
const NeoWeights& toy_neo_weights() {
  static const NeoWeights w = [] {
    hooklens::TensorMap t = hooklens::read_safetensors(kToyNeo / "model.safetensors");
    NeoWeights n;
    n.ln_w = t.at("transformer.ln_f.weight").to(at::kDouble);
    n.ln_b = t.at("transformer.ln_f.bias").to(at::kDouble);
    n.wte = t.at("transformer.wte.weight").to(at::kDouble);
    n.eps = hooklens::read_json_file(kToyNeo / "config.json").at("layer_norm_epsilon").get<double>();
    for (int l = 0; l < 4; ++l) {
      n.W_o.push_back(t.at(fmt::format("transformer.h.{}.attn.attention.out_proj.weight", l)).to(at::kDouble));
      n.b_o.push_back(t.at(fmt::format("transformer.h.{}.attn.attention.out_proj.bias", l)).to(at::kDouble));
    }
    return n;
  }();
  return w;
}

// A run's captures by "hook@prompt@step".
std::map<std::string, at::Tensor> captures_of(const fs::path& run) {
  hooklens::RunReader reader(run);
  std::map<std::string, at::Tensor> out;
  for (std::size_t i = 0; i < reader.capture_count(); ++i) {
    const auto& e = reader.entry(i);
    out[fmt::format("{}@{}@{}", e.hook, e.context.prompt, e.context.step)] = reader.load(i).to(at::kDouble);
  }
  return out;
}

std::string hooklens_path() { return (test::build_dir() / "bin/hooklens").string(); }

// Runs hooklens expecting a usage error (exit 2); returns its output.
std::string usage_refusal(const std::string& args, const fs::path& log) {
  const int status = test::run_hooklens(args, log);
  const std::string text = test::read_file(log);
  INFO("hooklens " << args << "\n" << text);
  CHECK(status == 2);
  CHECK(text.rfind("hooklens: error: ", 0) == 0);
  return text;
}

// A model that keeps Model::unembed's default, as the TorchScript model does.
class NoLens final : public hooklens::Model {
 public:
  NoLens() { info_.path = "scripted.pt", info_.n_layers = 1, info_.d_model = 4, info_.vocab_size = 8; }
  const hooklens::ModelInfo& info() const override { return info_; }
  std::vector<hooklens::HookPointInfo> hook_points() const override { return {}; }
  const hooklens::Tokenizer* tokenizer() const override { return nullptr; }
  std::unique_ptr<hooklens::ModelState> new_state() const override { return nullptr; }
  at::Tensor forward(const at::Tensor&, const hooklens::HookSet&, hooklens::CaptureContext, hooklens::ModelState*,
                     Logits) override {
    return {};
  }

 private:
  hooklens::ModelInfo info_;
};

}  // namespace

TEST_CASE("Model::unembed of the last resid_post is the model's logits (LayerNorm and RMSNorm)") {
  SECTION("toy-neo, resident weights, unembed before the first forward pass") {
    auto model = test::load_model("gpt_neo", kToyNeo);
    const at::Tensor zero = model->unembed(at::zeros({1, model->info().d_model}));
    // unembed(0) is what no part of the residual stream contributes: ln_f's bias through wte.
    const NeoWeights& w = toy_neo_weights();
    CHECK(test::max_abs_diff(zero[0], at::mv(w.wte, w.ln_b)) < 1e-5);
    check_unembed(*model, kText);
  }
  SECTION("toy-neo, streamed weights") {
    hooklens::LoadOptions streamed;
    streamed.resident_weights_bytes = 0;
    auto model = test::load_model("gpt_neo", kToyNeo, streamed);
    check_unembed(*model, kText);
  }
  SECTION("toy-llada (RMSNorm, no unembedding bias)") {
    auto model = test::load_model("llada", kToyLlada);
    check_unembed(*model, kText);
  }
  SECTION("bad input is a usage error") {
    auto model = test::load_model("gpt_neo", kToyNeo);
    CHECK(test::usage_error_of([&] { model->unembed(at::zeros({2, 3})); }).find("[..., 64]") != std::string::npos);
    CHECK(!test::usage_error_of([&] { model->unembed(at::zeros({2, 64}), at::zeros({2, 5})); }).empty());
    CHECK(!test::usage_error_of([&] { model->unembed(at::zeros({2, 64}, at::kDouble)); }).empty());
  }
}

TEST_CASE("Model::unembed on the GPT-2 fixture", "[fixtures]") {
  auto model = test::load_model("gpt2", test::fixtures() / "tiny-gpt2-a");
  check_unembed(*model, "Hello there, this is a test of the lens");
}

TEST_CASE("Model::unembed's default refuses: a model that cannot (TorchScript)") {
  NoLens model;
  CHECK(test::usage_error_of([&] { model.unembed(at::zeros({1, 4})); }) ==
        "scripted.pt cannot apply its final norm and unembedding to a residual stream (logit lens)");
  const hooklens::PluginRegistry registry({test::build_dir() / "plugins"});
  auto lens = registry.create_analyzer("logit_lens");
  lens->use_model(model);
  const json begin = {{"model", model.info().to_json()}, {"prompts", json::array()}, {"mode", "none"}};
  CHECK(test::usage_error_of([&] { lens->begin(begin); }).find("cannot apply its final norm") != std::string::npos);
  auto without = registry.create_analyzer("logit_lens");
  CHECK(test::usage_error_of([&] { without->begin(begin); }).find("--model DIR") != std::string::npos);
}

TEST_CASE("blocks.L.attn.hook_result: each head's z_h W_O_h; patching it patches the model") {
  auto model = test::load_model("gpt_neo", kToyNeo);
  const hooklens::ModelInfo& info = model->info();
  const int H = info.n_heads, dh = info.d_head;
  bool listed = false;
  for (const auto& p : model->hook_points())
    if (p.name == "blocks.2.attn.hook_result") {
      listed = true;
      CHECK(p.dims == std::vector<std::string>{"batch", "pos", "head", "d_model"});
      CHECK(p.layer == 2);
    }
  CHECK(listed);
  const at::Tensor ids = ids_of(*model, kText);
  test::Recorder plain({"*hook_attn_out"});
  const at::Tensor base = model->forward(ids, plain.hooks, {}, nullptr, Logits::all);
  test::Recorder rec({"*attn.hook_result", "*hook_attn_out", "*attn.hook_z"});
  const at::Tensor with_result = model->forward(ids, rec.hooks, {}, nullptr, Logits::all);
  CHECK(test::max_abs_diff(with_result, base) < 1e-4);
  const NeoWeights& w = toy_neo_weights();
  for (int l = 0; l < info.n_layers; ++l) {
    INFO("layer " << l);
    const at::Tensor result = rec.at(fmt::format("blocks.{}.attn.hook_result", l));
    const at::Tensor attn_out = rec.at(fmt::format("blocks.{}.hook_attn_out", l));
    const at::Tensor z = rec.at(fmt::format("blocks.{}.attn.hook_z", l)).to(at::kDouble);
    REQUIRE(result.sizes() == at::IntArrayRef({1, ids.size(1), H, info.d_model}));
    CHECK(test::max_abs_diff(result.sum(2) + w.b_o[size_t(l)].to(at::kFloat), attn_out) < 1e-5);
    CHECK(test::max_abs_diff(attn_out, plain.at(fmt::format("blocks.{}.hook_attn_out", l))) < 1e-5);
    for (int h = 0; h < H; ++h) {
      const at::Tensor expected = at::matmul(z.select(2, h), w.W_o[size_t(l)].narrow(1, h * dh, dh).t());
      CHECK(test::max_abs_diff(result.select(2, h), expected) < 1e-5);
    }
  }
  // Zeroing head 2 of layer 1 in hook_result is zero-ablating it in hook_z.
  auto zero_head = [](int head) {
    return [head](std::string_view, const hooklens::CaptureContext&, at::Tensor& t) {
      t = t.clone();
      t.select(2, head).zero_();
    };
  };
  hooklens::HookSet patch_result, patch_z;
  patch_result.add({{"blocks.1.attn.hook_result"}}, zero_head(2));
  patch_z.add({{"blocks.1.attn.hook_z"}}, zero_head(2));
  const at::Tensor a = model->forward(ids, patch_result, {}, nullptr, Logits::all);
  const at::Tensor b = model->forward(ids, patch_z, {}, nullptr, Logits::all);
  CHECK(test::max_abs_diff(a, b) < 1e-4);
  CHECK(test::max_abs_diff(a, base) > 1e-2);  // the patch changed the model
  // A pass that only wants one layer's result stops there, with the tensor a whole pass shows.
  test::Recorder only({"blocks.2.attn.hook_result"}), whole({"blocks.2.attn.hook_result"});
  CHECK(!model->forward(ids, only.hooks, {}, nullptr, Logits::none).defined());
  model->forward(ids, whole.hooks, {}, nullptr, Logits::all);
  CHECK(at::equal(only.at("blocks.2.attn.hook_result"), whole.at("blocks.2.attn.hook_result")));
}

TEST_CASE("logit_lens report: the lens against the logits, the attribution against the weights, live = offline") {
  test::TempDir dir;
  const fs::path run = dir / "run";
  test::require_hooklens(fmt::format("capture --model '{}' --prompt '{}' --prompt 'Sam liked to' --hooks '{}' --analyze "
                                     "logit_lens --analyze-option logit_lens.positions=all --analyze-option logit_lens.top_k=4 "
                                     "--out '{}'",
                                     kToyNeo.string(), kText, kLensHooks, run.string()),
                         dir / "log");
  const json report = hooklens::read_json_file(run / "reports/logit_lens.json");
  const auto captures = captures_of(run);
  const json& manifest = hooklens::read_json_file(run / "manifest.json");
  const std::size_t positions = manifest["prompts"][0]["ids"].size() + manifest["prompts"][1]["ids"].size();
  REQUIRE(report["entries"].size() == positions);
  const NeoWeights& w = toy_neo_weights();
  const int L = 4, H = 4;
  double worst_error = 0, worst_recomputed = 0;
  std::map<std::pair<int, int>, double> head_sums;
  for (const json& e : report["entries"]) {
    const int p = e["prompt"], pos = e["position"];
    INFO("prompt " << p << " position " << pos);
    auto at = [&](const std::string& hook) { return captures.at(fmt::format("{}@{}@0", hook, p))[0][pos]; };
    // The lens of the last layer is the top-k of the model's logits.
    const at::Tensor logits = at("hook_logits");
    const auto top = at::topk(at::softmax(logits, -1), 4);
    const json& last = e["lens"].back();
    CHECK(last["layer"] == L - 1);
    REQUIRE(last["top"].size() == 4);
    for (int i = 0; i < 4; ++i) {
      CHECK(last["top"][i]["id"] == std::get<1>(top)[i].item<std::int64_t>());
      CHECK(std::abs(last["top"][i]["prob"].get<double>() - std::get<0>(top)[i].item<double>()) < 1e-5);
    }
    CHECK(last["final_rank"] == 0);
    CHECK(e["final"]["id"] == logits.argmax().item<std::int64_t>());
    CHECK(e["lens"].size() == L + 1);  // the embeddings and every layer
    CHECK(e["lens"][0]["layer"] == -1);
    // The attribution sums to the logit, and each part is what the weights give.
    const json& d = e["dla"];
    REQUIRE(d.is_object());
    const std::int64_t target = d["target"]["id"];
    CHECK(target == e["final"]["id"]);
    worst_error = std::max(worst_error, std::abs(d["error"].get<double>()));
    CHECK(std::abs(d["logit"].get<double>() - logits[target].item<double>()) < 1e-5);
    const at::Tensor x_final = at(fmt::format("blocks.{}.hook_resid_post", L - 1));
    const double scale = 1.0 / std::sqrt(x_final.var(/*unbiased=*/false).item<double>() + w.eps);
    const at::Tensor direction = w.wte[target] * w.ln_w * scale;
    auto dla = [&](const at::Tensor& part) { return at::dot(part - part.mean(), direction).item<double>(); };
    auto compare = [&](double reported, double recomputed) {
      worst_recomputed = std::max(worst_recomputed, std::abs(reported - recomputed));
    };
    compare(d["constant"], at::dot(w.ln_b, w.wte[target]).item<double>());
    compare(d["embeddings"], dla(at("blocks.0.hook_resid_pre")));
    for (int l = 0; l < L; ++l) {
      const at::Tensor result = at(fmt::format("blocks.{}.attn.hook_result", l));
      for (int h = 0; h < H; ++h) {
        compare(d["heads"][l][h], dla(result[h]));
        head_sums[{l, h}] += d["heads"][l][h].get<double>();
      }
      compare(d["attn_bias"][l], dla(w.b_o[size_t(l)]));
      compare(d["mlp"][l], dla(at(fmt::format("blocks.{}.hook_mlp_out", l))));
    }
  }
  CHECK(worst_error < 1e-3);
  CHECK(worst_recomputed < 1e-4);
  WARN("logit_lens on toy-neo: largest |logit - constant - sum of parts| " << worst_error
       << ", largest |reported - recomputed part| " << worst_recomputed);
  // "heads": the per-head attribution averaged over the entries (what the figures draw).
  REQUIRE(report["heads"].size() == std::size_t(L * H));
  for (const json& h : report["heads"])
    CHECK(std::abs(h["dla_mean"].get<double>() - head_sums[{h["layer"], h["head"]}] / double(positions)) < 1e-9);
  REQUIRE(report["headline"].size() == 2);
  CHECK(report["headline"][0].get<std::string>().rfind("prompt 0 position 13: final top-1 ' lived'", 0) == 0);

  // Offline with the model: the same report, byte for byte.
  const std::string live = test::read_file(run / "reports/logit_lens.json");
  test::require_hooklens(fmt::format("analyze '{}' --analyze logit_lens --model '{}' --analyze-option logit_lens.positions=all "
                                     "--analyze-option logit_lens.top_k=4",
                                     run.string(), kToyNeo.string()),
                         dir / "log2");
  CHECK(test::read_file(run / "reports/logit_lens.json") == live);

  // Refusals: no model, another model's shapes, bad options.
  const std::string no_model = usage_refusal(fmt::format("analyze '{}' --analyze logit_lens", run.string()), dir / "log3");
  CHECK(no_model.find("--model DIR") != std::string::npos);
  const std::string other =
      usage_refusal(fmt::format("analyze '{}' --analyze logit_lens --model '{}'", run.string(), kToyLlada.string()), dir / "log4");
  CHECK(other.find("d_model 128") != std::string::npos);
  for (const char* bad : {"top_k=0", "target=99999", "target=Once upon", "positions=some", "colour=red"}) {
    const std::string text = usage_refusal(fmt::format("analyze '{}' --analyze logit_lens --model '{}' --analyze-option "
                                                       "'logit_lens.{}'",
                                                       run.string(), kToyNeo.string(), bad),
                                           dir / "log5");
    CHECK(text.find("logit_lens") != std::string::npos);
  }
}

TEST_CASE("logit_lens options: target as text or id, chosen positions; missing captures") {
  test::TempDir dir;
  const fs::path run = dir / "run";
  test::require_hooklens(fmt::format("capture --model '{}' --prompt '{}' --hooks '{}' --out '{}'", kToyNeo.string(), kText,
                                     kLensHooks, run.string()),
                         dir / "log");
  auto analyze = [&](const std::string& options) {
    test::require_hooklens(fmt::format("analyze '{}' --analyze logit_lens --model '{}' {}", run.string(), kToyNeo.string(), options),
                           dir / "log2");
    return hooklens::read_json_file(run / "reports/logit_lens.json");
  };
  auto model = test::load_model("gpt_neo", kToyNeo);
  const std::int64_t tom = model->tokenizer()->encode(" Tom", false).at(0);
  for (const std::string& target : {std::string("' Tom'"), std::to_string(tom)}) {
    INFO("target=" << target);
    const json r = analyze("--analyze-option logit_lens.target=" + target);
    REQUIRE(r["entries"].size() == 1);  // the last position
    const json& d = r["entries"][0]["dla"];
    CHECK(d["target"]["id"] == tom);
    CHECK(d["target"]["token"] == " Tom");
    CHECK(std::abs(d["error"].get<double>()) < 1e-3);
  }
  const json chosen = analyze("--analyze-option logit_lens.positions=0,3,500");
  REQUIRE(chosen["entries"].size() == 2);
  CHECK(chosen["entries"][0]["position"] == 0);
  CHECK(chosen["entries"][1]["position"] == 3);
  CHECK(chosen["entries"][1]["input_token"] == model->tokenizer()->token_string(model->tokenizer()->encode(kText, false)[3]));

  // A run without the parts: the lens, no attribution (and why); without resid_post: an error.
  const fs::path lens_only = dir / "lens_only";
  test::require_hooklens(fmt::format("capture --model '{}' --prompt '{}' --hooks 'blocks.*.hook_resid_post,hook_logits' --out '{}'",
                                     kToyNeo.string(), kText, lens_only.string()),
                         dir / "log3");
  test::require_hooklens(fmt::format("analyze '{}' --analyze logit_lens --model '{}'", lens_only.string(), kToyNeo.string()),
                         dir / "log4");
  const json partial = hooklens::read_json_file(lens_only / "reports/logit_lens.json");
  REQUIRE(partial["entries"].size() == 1);
  CHECK(partial["entries"][0]["dla"].is_null());
  CHECK(partial["entries"][0]["dla_missing"] == "blocks.0.attn.hook_result");
  CHECK(partial["entries"][0]["lens"].size() == 4);  // no embeddings row without blocks.0.hook_resid_pre
  const fs::path none = dir / "none";
  test::require_hooklens(fmt::format("capture --model '{}' --prompt '{}' --hooks 'hook_logits' --out '{}'", kToyNeo.string(),
                                     kText, none.string()),
                         dir / "log5");
  test::require_hooklens(fmt::format("analyze '{}' --analyze logit_lens --model '{}'", none.string(), kToyNeo.string()), dir / "log6");
  const json failed = hooklens::read_json_file(none / "reports/logit_lens.json");
  CHECK(failed["error"].get<std::string>().find("no blocks.0.hook_resid_post capture") != std::string::npos);
  // Without hook_logits no pass ends: an error, not an empty report (one prompt: at the end; two: at the second).
  for (const std::string prompts : {"--prompt 'Tom'", "--prompt 'Tom' --prompt 'Sam liked to'"}) {
    const fs::path no_logits = dir / "no_logits";
    fs::remove_all(no_logits);
    test::require_hooklens(fmt::format("capture --model '{}' {} --hooks 'blocks.*.hook_resid_post' --out '{}'", kToyNeo.string(),
                                       prompts, no_logits.string()),
                           dir / "log7");
    test::require_hooklens(fmt::format("analyze '{}' --analyze logit_lens --model '{}'", no_logits.string(), kToyNeo.string()),
                           dir / "log8");
    const json report = hooklens::read_json_file(no_logits / "reports/logit_lens.json");
    CHECK(report.value("error", "").find("prompt 0 step 0 has no hook_logits capture") != std::string::npos);
  }
}

TEST_CASE("logit_lens over a batch of prompts: the same report as one prompt at a time") {
  test::TempDir dir;
  json reports[2];
  std::size_t length = 0;
  for (int batch : {1, 2}) {
    const fs::path run = dir / fmt::format("run{}", batch);
    test::require_hooklens(fmt::format("capture --model '{}' --prompt 'Sam liked to play.' --prompt 'Tom liked to run.' "
                                       "--batch-size {} --hooks none --analyze logit_lens --analyze-option logit_lens.positions=all "
                                       "--out '{}'",
                                       kToyNeo.string(), batch, run.string()),
                           dir / "log");
    const json manifest = hooklens::read_json_file(run / "manifest.json");
    length = manifest["prompts"][0]["ids"].size();
    REQUIRE(manifest["prompts"][1]["ids"].size() == length);  // one batch of 2
    reports[batch - 1] = hooklens::read_json_file(run / "reports/logit_lens.json");
  }
  REQUIRE(!reports[0].contains("error"));
  REQUIRE(reports[0]["entries"].size() == 2 * length);
  REQUIRE(reports[1]["entries"].size() == 2 * length);
  // Batched matrix products round differently: the same entries within 1e-4.
  for (std::size_t i = 0; i < reports[0]["entries"].size(); ++i) {
    const json &a = reports[0]["entries"][i], &b = reports[1]["entries"][i];
    CHECK(a["prompt"] == b["prompt"]);
    CHECK(a["position"] == b["position"]);
    CHECK(a["final"]["id"] == b["final"]["id"]);
    CHECK(std::abs(a["dla"]["heads"][3][1].get<double>() - b["dla"]["heads"][3][1].get<double>()) < 1e-4);
    CHECK(a["lens"][2]["top"][0]["id"] == b["lens"][2]["top"][0]["id"]);
  }
}

TEST_CASE("logit_lens on generation: one entry per forward pass, its final top-1 is the greedy token") {
  test::TempDir dir;
  const fs::path run = dir / "run";
  test::require_hooklens(fmt::format("generate --model '{}' --prompt 'Once upon a time' --max-new-tokens 6 --hooks none "
                                     "--analyze logit_lens --out '{}'",
                                     kToyNeo.string(), run.string()),
                         dir / "log");
  const json report = hooklens::read_json_file(run / "reports/logit_lens.json");
  const json manifest = hooklens::read_json_file(run / "manifest.json");
  const json& steps = manifest["generation"]["steps"];
  const std::size_t P = manifest["prompts"][0]["ids"].size();
  REQUIRE(steps.size() == 6);
  // The prefill and the decode steps that fed tokens 1..5: 6 passes, each predicting the next token.
  REQUIRE(report["entries"].size() == 6);
  for (std::size_t i = 0; i < 6; ++i) {
    const json& e = report["entries"][i];
    INFO("entry " << i);
    CHECK(e["step"] == int(i));
    CHECK(e["position"] == P - 1 + i);
    CHECK(e["final"]["id"] == steps[i]["token"]);
    CHECK(std::abs(e["dla"]["error"].get<double>()) < 1e-3);
  }
}

TEST_CASE("logit_lens on masked diffusion (RMSNorm): the attribution sums to the logit") {
  test::TempDir dir;
  const fs::path run = dir / "run";
  test::require_hooklens(fmt::format("generate --model '{}' --prompt 'Once upon a time' --gen-length 8 --steps 4 "
                                     "--block-length 4 --hooks none --analyze logit_lens --analyze-option logit_lens.positions=all "
                                     "--out '{}'",
                                     kToyLlada.string(), run.string()),
                         dir / "log");
  const json report = hooklens::read_json_file(run / "reports/logit_lens.json");
  REQUIRE(!report["entries"].empty());
  double worst = 0;
  for (const json& e : report["entries"]) {
    worst = std::max(worst, std::abs(e["dla"]["error"].get<double>()));
    CHECK(e["lens"].back()["top"][0]["id"] == e["final"]["id"]);
  }
  CHECK(worst < 1e-3);
  WARN("logit_lens on toy-llada (RMSNorm): " << report["entries"].size() << " entries, largest |error| " << worst);
}

TEST_CASE("figures draw the logit lens: layer x position probabilities, layer x head attribution") {
  test::TempDir dir;
  const fs::path run = dir / "run";
  test::require_hooklens(fmt::format("capture --model '{}' --prompt '{}' --hooks none --analyze logit_lens "
                                     "--analyze-option logit_lens.positions=all --out '{}'",
                                     kToyNeo.string(), kText, run.string()),
                         dir / "log");
  const json report = hooklens::read_json_file(run / "reports/logit_lens.json");
  const hooklens::PluginRegistry registry({test::build_dir() / "plugins"});
  const json result = hooklens::renderer_for(registry, "png")->render(run, "png", dir / "figures", json::object());
  auto entry = [&](const std::string& file) {
    for (const json& f : result.at("files"))
      if (f.at("file") == file) return f;
    FAIL("no " << file << " in " << result.dump());
    return json();
  };
  auto centre = [](const json& panel, int r, int c) {
    const json& m = panel.at("matrix");
    return std::array<int, 2>{m.at("x").get<int>() + c * m.at("cell_width").get<int>() + m.at("cell_width").get<int>() / 2,
                              m.at("y").get<int>() + r * m.at("cell_height").get<int>() + m.at("cell_height").get<int>() / 2};
  };
  auto colour = [](const hooklens::drawing::Scale& scale, double v) {
    const hooklens::drawing::Rgb rgb = hooklens::drawing::colour_of(scale, v);
    return std::array<int, 3>{rgb.r, rgb.g, rgb.b};
  };
  // Rows: the embeddings and 4 layers; columns: the 14 positions. Cell (row, position) shows the lens's
  // probability of the final prediction (panel 0) and its top-1 probability (panel 1), on 0-1.
  const json lens = entry("logit_lens_p0.png");
  REQUIRE(lens.at("panels").size() == 2);
  CHECK(lens.at("panels")[0].at("matrix").at("rows") == 5);
  CHECK(lens.at("panels")[0].at("matrix").at("cols") == report["entries"].size());
  const test::Png png = test::Png::load(dir / "figures/logit_lens_p0.png");
  const hooklens::drawing::Scale unit{0.0, 1.0, &hooklens::drawing::kViridis};
  for (int c : {0, 5, 13})
    for (int r : {0, 2, 4}) {
      INFO("position " << c << " row " << r);
      const json& layer = report["entries"][size_t(c)]["lens"][size_t(r)];
      const auto a = centre(lens.at("panels")[0], r, c), b = centre(lens.at("panels")[1], r, c);
      CHECK(png.pixel(a[0], a[1]) == colour(unit, layer["final_prob"].get<double>()));
      CHECK(png.pixel(b[0], b[1]) == colour(unit, layer["top"][0]["prob"].get<double>()));
    }
  // The attribution of the last position: layers x (heads, bias, MLP) on a signed scale.
  const json attribution = entry("logit_lens_p0_attribution.png");
  const json& panel = attribution.at("panels")[0];
  CHECK(panel.at("matrix").at("cols") == 6);
  CHECK(panel.at("scale").at("colormap") == "blue-white-red");
  const json& dla = report["entries"].back()["dla"];
  const double hi = panel.at("scale").at("max").get<double>();
  const hooklens::drawing::Scale signed_scale{-hi, hi, &hooklens::drawing::kDiverging};
  const test::Png apng = test::Png::load(dir / "figures/logit_lens_p0_attribution.png");
  const json& top = dla["largest_head"];
  const auto cell = centre(panel, top["layer"], top["head"]);
  CHECK(apng.pixel(cell[0], cell[1]) == colour(signed_scale, top["value"].get<double>()));
  const auto mlp = centre(panel, 0, 5);
  CHECK(apng.pixel(mlp[0], mlp[1]) == colour(signed_scale, dla["mlp"][0].get<double>()));
  // And the generic per-head matrices of every report: dla_mean.
  CHECK(entry("report_logit_lens.png").at("panels")[0].at("title") == "dla_mean");
}
