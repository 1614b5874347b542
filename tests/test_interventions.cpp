// Interventions (hooklens/intervention.h) against independent recomputations: patching a run with
// its own captures changes nothing; patching clean into corrupted follows a circuit built by hand;
// steering, mean- and resample-ablation equal the same change made by a hook written here.
#include "model_util.h"
#include "test_util.h"

#include <ATen/ATen.h>

#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/intervention.h>
#include <hooklens/run.h>
#include <hooklens/run_session.h>
#include <hooklens/safetensors.h>
#include <hooklens/text.h>
#include <hooklens/tokenizer.h>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <set>

namespace {

namespace fs = std::filesystem;
namespace names = hooklens::hook_names;
using hooklens::CaptureContext;
using hooklens::HookSet;
using hooklens::IndexRange;
using hooklens::InterventionKind;
using hooklens::InterventionSite;
using hooklens::InterventionSpec;
using hooklens::RunSession;
using hooklens::RunSettings;
using nlohmann::json;

const fs::path kModels = fs::path(HOOKLENS_SOURCE_DIR) / "models";

// A GPT-Neo whose one circuit is known: layer 0's head attends from every position to position 0
// and writes that position's token into the token subspace, so the last position predicts the
// first token. Layer 1 does nothing. Tokens are one-hot in dims 0-7, positions in dims 8-15.
void write_copy_first_token_model(const fs::path& dir) {
  constexpr std::int64_t V = 8, P = 8, D = 32;
  fs::create_directories(dir);
  at::Tensor wte = at::zeros({V, D}), wpe = at::zeros({P, D});
  for (std::int64_t t = 0; t < V; ++t) wte[t][t] = 4.0;
  for (std::int64_t p = 0; p < P; ++p) wpe[p][8 + p] = 4.0;
  std::vector<std::pair<std::string, at::Tensor>> tensors{{"transformer.wte.weight", wte}, {"transformer.wpe.weight", wpe}};
  for (int l = 0; l < 2; ++l) {
    const std::string p = fmt::format("transformer.h.{}.", l);
    at::Tensor q = at::zeros({D, D}), k = at::zeros({D, D}), v = at::zeros({D, D}), o = at::zeros({D, D});
    if (l == 0) {
      for (std::int64_t pos = 0; pos < P; ++pos) q[0][8 + pos] = 1.0;  // every query: the same constant
      k[0][8] = 10.0;                                                   // only position 0's key matches it
      for (std::int64_t t = 0; t < V; ++t) v[t][t] = 1.0, o[t][t] = 10.0;  // copy the token, amplified
    }
    for (auto& [name, t] : std::vector<std::pair<std::string, at::Tensor>>{
             {"ln_1.weight", at::ones({D})}, {"ln_1.bias", at::zeros({D})},
             {"attn.attention.q_proj.weight", q}, {"attn.attention.k_proj.weight", k},
             {"attn.attention.v_proj.weight", v}, {"attn.attention.out_proj.weight", o},
             {"attn.attention.out_proj.bias", at::zeros({D})}, {"ln_2.weight", at::ones({D})},
             {"ln_2.bias", at::zeros({D})}, {"mlp.c_fc.weight", at::zeros({4 * D, D})},
             {"mlp.c_fc.bias", at::zeros({4 * D})}, {"mlp.c_proj.weight", at::zeros({D, 4 * D})},
             {"mlp.c_proj.bias", at::zeros({D})}})
      tensors.emplace_back(p + name, t);
  }
  tensors.emplace_back("transformer.ln_f.weight", at::ones({D}));
  tensors.emplace_back("transformer.ln_f.bias", at::zeros({D}));
  hooklens::write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
  const json config = {{"model_type", "gpt_neo"}, {"architectures", {"GPTNeoForCausalLM"}},
                       {"hidden_size", D}, {"num_layers", 2}, {"num_heads", 1},
                       {"attention_layers", {"global", "global"}}, {"window_size", 4},
                       {"max_position_embeddings", P}, {"vocab_size", V}, {"intermediate_size", nullptr},
                       {"activation_function", "gelu_new"}, {"layer_norm_epsilon", 1e-5},
                       {"bos_token_id", V - 1}, {"eos_token_id", V - 1}, {"tie_word_embeddings", true}};
  hooklens::write_text_file(dir / "config.json", config.dump(2) + "\n");
}

RunSettings settings(const fs::path& model, const fs::path& out, std::vector<std::string> hooks) {
  RunSettings s;
  s.model = model.string();
  s.out = out.string();
  s.threads = 1;
  s.hooks = std::move(hooks);
  return s;
}

void capture(const RunSettings& s) { RunSession(s, RunSession::Kind::capture).capture(); }

// Every capture of `hook` in the run, in manifest order.
std::vector<at::Tensor> captures_of(const fs::path& run, const std::string& hook) {
  hooklens::RunReader reader(run);
  std::vector<at::Tensor> out;
  for (std::size_t i = 0; i < reader.capture_count(); ++i)
    if (reader.entry(i).hook == hook) out.push_back(reader.load(i).clone());
  return out;
}

at::Tensor logits_of(const fs::path& run, std::size_t prompt = 0) {
  const auto all = captures_of(run, std::string(names::logits));
  REQUIRE(all.size() > prompt);
  return all[prompt];
}

bool same(const at::Tensor& a, const at::Tensor& b) { return a.sizes() == b.sizes() && at::equal(a, b); }

// Logits of one forward pass of `ids` with `hooks`, computed here on the model itself.
at::Tensor reference_logits(hooklens::Model& model, const std::vector<std::int64_t>& ids, const HookSet& hooks) {
  return model.forward(at::tensor(at::ArrayRef<std::int64_t>(ids), at::kLong).unsqueeze(0), hooks, CaptureContext{},
                       nullptr, hooklens::Logits::all);
}

std::vector<std::int64_t> ids_of(const std::string& list) {
  std::vector<std::int64_t> ids;
  for (const auto& item : hooklens::split_list(list)) ids.push_back(std::stoll(item));
  return ids;
}

}  // namespace

TEST_CASE("intervention sites and specs parse, and malformed ones are refused", "[interventions]") {
  const auto site = InterventionSite::parse("blocks.1.attn.hook_z[head=3, pos=-2:,step=1:3]", "--patch");
  CHECK(site.hook == "blocks.1.attn.hook_z");
  REQUIRE(site.select.size() == 2);
  CHECK(site.select[0].first == "head");
  CHECK(site.select[0].second.absolute(4) == std::make_pair<std::int64_t, std::int64_t>(3, 4));
  CHECK(site.select[1].second.absolute(10) == std::make_pair<std::int64_t, std::int64_t>(8, 10));
  REQUIRE(site.steps);
  CHECK(site.steps->absolute(5) == std::make_pair<std::int64_t, std::int64_t>(1, 3));
  CHECK(site.text() == "blocks.1.attn.hook_z[head=3,pos=-2:,step=1:3]");
  CHECK(InterventionSite::parse(site.text(), "--patch").text() == site.text());
  // A range from 0 through the end prints as "0:" (":" alone is not a range; the fuzzer found it).
  CHECK(InterventionSite::parse("hook_embed[pos=0:]", "--patch").text() == "hook_embed[pos=0:]");
  // -1 is the last position however long the sequence has grown; a cached step holds the newest only.
  const IndexRange last = IndexRange::parse("-1", "x");
  CHECK(last.resolve(0, 10, 10) == std::make_pair<std::int64_t, std::int64_t>(9, 10));
  CHECK(last.resolve(12, 1, 13) == std::make_pair<std::int64_t, std::int64_t>(0, 1));
  CHECK(IndexRange::parse("5", "x").resolve(6, 1, 7).first == IndexRange::parse("5", "x").resolve(6, 1, 7).second);
  CHECK(InterventionSite::dim_of("pos", {"batch", "head", "query", "key"}) == "query");
  CHECK(InterventionSite::dim_of("neuron", {"batch", "pos", "d_mlp"}) == "d_mlp");
  CHECK(InterventionSite::dim_of("head", {"batch", "pos", "d_model"}).empty());

  const auto steer = InterventionSpec::steer("blocks.0.hook_resid_pre[pos=1]=dir/v.safetensors:name*-2.5");
  CHECK(steer.site.text() == "blocks.0.hook_resid_pre[pos=1]");
  CHECK(steer.vector == "dir/v.safetensors:name");
  CHECK(steer.scale == -2.5);
  CHECK(hooklens::split_tensor_file(steer.vector) == std::make_pair(std::string("dir/v.safetensors"), std::string("name")));
  CHECK(hooklens::split_tensor_file("a:b/v.safetensors").first == "a:b/v.safetensors");
  const auto along = InterventionSpec::ablation(InterventionKind::mean_ablate, "blocks.1.hook_resid_post@d.safetensors");
  CHECK(along.vector == "d.safetensors");
  CHECK(along.option() == "--mean-ablate");

  using Catch::Matchers::Contains;
  for (const auto& [text, why] : std::vector<std::pair<std::string, std::string>>{
           {"", "expected HOOK"},
           {"blocks.*.hook_z", "no patterns"},
           {"blocks.1.hook_z[pos=1", "must end with ']'"},
           {"blocks.1.hook_z[]", "empty selectors"},
           {"blocks.1.hook_z[pos]", "not KEY=RANGE"},
           {"blocks.1.hook_z[pos=x]", "is not an index"},
           {"blocks.1.hook_z[pos=5:3]", "is empty"},
           {"blocks.1.hook_z[pos=-1:0]", "is empty"},
           {"blocks.1.hook_z[pos=1,pos=2]", "selected twice"},
           {"blocks.1.hook_z[step=-1]", "no negative"},
           {"blocks.1.hook_z[pos=1]\n", "control character"}})
    CHECK_THROWS_WITH(InterventionSite::parse(text, "--patch"), Contains(why));
  CHECK_THROWS_WITH(InterventionSpec::steer("blocks.0.hook_resid_pre"), Contains("expected SITE=FILE"));
  CHECK_THROWS_WITH(InterventionSpec::steer("blocks.0.hook_resid_pre=v.safetensors*x"), Contains("not a finite number"));
  CHECK_THROWS_WITH(InterventionSpec::steer("blocks.0.hook_resid_pre=*2"), Contains("no vector file"));
}

TEST_CASE("patching a run with its own captures changes nothing, in every mode", "[interventions]") {
  test::TempDir tmp;
  const fs::path neo = kModels / "toy-neo";
  const std::string prompt = "Once upon a time, there was a little cat named Tom.";
  const std::vector<std::string> points{"hook_embed", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_q",
                                        "blocks.1.attn.hook_v", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z",
                                        "blocks.2.mlp.hook_post", "blocks.2.hook_attn_out", "blocks.3.hook_resid_post"};
  SECTION("one forward pass per prompt, in batches") {
    RunSettings clean = settings(neo, tmp / "clean", points);
    clean.hooks.push_back(std::string(names::logits));
    clean.prompts = {prompt, "Tom liked to run in the school."};
    clean.batch_size = 2;
    capture(clean);
    for (const auto& point : points)
      for (const std::string select : {"", "[pos=3:7]", "[pos=-1]"}) {
        CAPTURE(point, select);
        RunSettings patched = settings(neo, tmp / "patched", {std::string(names::logits)});
        patched.prompts = clean.prompts;
        patched.batch_size = 2;
        patched.overwrite = true;
        patched.interventions.patch = {point + select};
        patched.interventions.patch_from = (tmp / "clean").string();
        capture(patched);
        for (std::size_t p = 0; p < 2; ++p) CHECK(same(logits_of(tmp / "patched", p), logits_of(tmp / "clean", p)));
        const json entry = hooklens::RunReader(tmp / "patched").manifest().at("interventions").at(0);
        CHECK(entry.at("kind") == "patch");
        CHECK(entry.at("applied") == 2);
      }
  }
  // A generation patched at `site` with its own captures: the same logits at every step.
  const auto self_patched_generation = [&](RunSettings clean, const std::string& site, std::size_t steps,
                                           int applied) {
    RunSession(clean, RunSession::Kind::generate).generate();
    RunSettings patched = clean;
    patched.out = (tmp / "patched").string();
    patched.interventions.patch = {site};
    patched.interventions.patch_from = (tmp / "clean").string();
    RunSession(patched, RunSession::Kind::generate).generate();
    const auto a = captures_of(tmp / "clean", std::string(names::logits)),
               b = captures_of(tmp / "patched", std::string(names::logits));
    REQUIRE(a.size() == steps);
    REQUIRE(b.size() == a.size());
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(same(a[i], b[i]));
    CHECK(hooklens::RunReader(tmp / "patched").manifest().at("interventions").at(0).at("applied") == applied);
  };
  SECTION("autoregressive generation, every step") {
    RunSettings clean = settings(neo, tmp / "clean", {"blocks.2.hook_resid_post", std::string(names::logits)});
    clean.prompts = {prompt};
    clean.autoregressive.max_new_tokens = 6;
    self_patched_generation(clean, "blocks.2.hook_resid_post", 6, 6);
  }
  SECTION("masked diffusion, every step of every block") {
    RunSettings clean = settings(kModels / "toy-llada", tmp / "clean", {"blocks.0.hook_resid_post", std::string(names::logits)});
    clean.prompts = {prompt};
    clean.diffusion.gen_length = 8;
    clean.diffusion.steps = 4;
    clean.diffusion.block_length = 4;
    self_patched_generation(clean, "blocks.0.hook_resid_post[block=1]", 4, 2);  // block 1: steps 2 and 3
  }
}

TEST_CASE("patching clean into corrupted restores the clean logits where the circuit carries the token",
          "[interventions]") {
  test::TempDir tmp;
  const fs::path model = tmp / "copy-first";
  write_copy_first_token_model(model);
  const std::string logits(names::logits);
  // Clean starts with token 2, corrupted with token 5; the rest is the same.
  RunSettings clean = settings(model, tmp / "clean", {"blocks.*.hook_resid_pre", "blocks.0.attn.hook_z", logits});
  clean.prompt_ids = {"2,1,3,4,6"};
  capture(clean);
  RunSettings corrupted = clean;
  corrupted.out = (tmp / "corrupted").string();
  corrupted.prompt_ids = {"5,1,3,4,6"};
  capture(corrupted);
  const at::Tensor clean_logits = logits_of(tmp / "clean"), corrupted_logits = logits_of(tmp / "corrupted");
  // The circuit works: the last position predicts the first token.
  REQUIRE(clean_logits[0][-1].argmax().item<std::int64_t>() == 2);
  REQUIRE(corrupted_logits[0][-1].argmax().item<std::int64_t>() == 5);

  const auto patched = [&](const std::string& site) {
    RunSettings s = corrupted;
    s.out = (tmp / "patched").string();
    s.overwrite = true;
    s.hooks = {logits};
    s.interventions.patch = {site};
    s.interventions.patch_from = (tmp / "clean").string();
    capture(s);
    return logits_of(tmp / "patched");
  };
  // Before layer 0 the token is only at position 0: patching it there restores everything.
  CHECK(same(patched("blocks.0.hook_resid_pre[pos=0]"), clean_logits));
  // Layer 0's head moved it to the last position: position 0 no longer matters there ...
  CHECK(same(patched("blocks.1.hook_resid_pre[pos=0]")[0][-1], corrupted_logits[0][-1]));
  // ... the last position does, and so does the head's output at it.
  CHECK(same(patched("blocks.1.hook_resid_pre[pos=-1]")[0][-1], clean_logits[0][-1]));
  CHECK(same(patched("blocks.0.attn.hook_z[pos=4,head=0]")[0][-1], clean_logits[0][-1]));
  // The last position before layer 0 holds nothing of the first token.
  CHECK(same(patched("blocks.0.hook_resid_pre[pos=4]"), corrupted_logits));

  SECTION("sites that cannot apply, and shapes that differ, are refused") {
    RunSettings longer = corrupted;
    longer.out = (tmp / "longer").string();
    longer.prompt_ids = {"5,1,3,4,6,6"};
    longer.hooks = {logits};
    longer.interventions.patch_from = (tmp / "clean").string();
    for (const auto& [site, why] : std::vector<std::pair<std::string, std::string>>{
             {"blocks.0.hook_resid_pre[pos=7]", "prompt 0 reaches 6 positions (0-5): pos 7 lies outside"},
             {"blocks.1.hook_resid_post", "has no capture of blocks.1.hook_resid_post"},
             {"blocks.0.hook_nothing", "the model has no hook point blocks.0.hook_nothing"},
             {"blocks.0.attn.hook_z[head=1]", "head of blocks.0.attn.hook_z are 0-0"},
             {"blocks.0.hook_resid_pre[head=0]", "has no dim 'head'; its dims are pos, d_model"},
             {"blocks.0.hook_resid_pre[step=2]", "this run has steps 0-0"},
             {"blocks.0.hook_resid_pre[block=0]", "block= is for masked-diffusion generation"}}) {
      longer.interventions.patch = {site};
      CHECK_THROWS_WITH(capture(longer), Catch::Contains(why));
    }
    longer.interventions.patch_from.clear();
    CHECK_THROWS_WITH(capture(longer), Catch::Contains("--patch needs --patch-from RUN"));
    longer.interventions.patch.clear();
    longer.interventions.patch_from = (tmp / "clean").string();
    CHECK_THROWS_WITH(capture(longer), Catch::Contains("--patch-from applies to --patch SITE"));
    CHECK_FALSE(fs::exists(tmp / "longer"));  // refused before anything was written
    // Found only when the patched point fires: the run is left incomplete, with the reason.
    longer.interventions.patch = {"blocks.0.hook_resid_pre"};
    CHECK_THROWS_WITH(capture(longer), Catch::Contains("[1, 5, 32] in") && Catch::Contains("[1, 6, 32] here"));
    CHECK_THROWS_WITH(hooklens::RunReader(tmp / "longer"), Catch::Contains("incomplete"));
  }
}

TEST_CASE("patch-sweep finds the circuit: where the token is, layer by layer", "[interventions]") {
  test::TempDir tmp;
  const fs::path model = tmp / "copy-first";
  write_copy_first_token_model(model);
  const auto sweep = [&](const std::string& args) {
    test::require_hooklens(fmt::format("patch-sweep --model '{}' --clean-ids 2,1,3,4,6 --corrupted-ids 5,1,3,4,6 --threads 1 "
                                       "--out '{}' --overwrite --render png,svg {}",
                                       model.string(), (tmp / "sweep").string(), args),
                           tmp / "log");
    return json::parse(test::read_file(tmp / "sweep" / "patch_sweep.json"));
  };
  // Layers x positions of the residual stream: the clean token restores the prediction at position 0
  // before layer 0 and at the last position after it; nowhere else.
  json report = sweep("--batch-size 3");
  CHECK(report.at("answer").at("id") == 2);  // the default tokens: each prompt's top prediction
  CHECK(report.at("wrong").at("id") == 5);
  REQUIRE(report.at("cells").size() == 10);
  for (const json& cell : report["cells"]) {
    const int layer = cell.at("layer"), position = cell.at("position");
    const bool restores = (layer == 0 && position == 0) || (layer == 1 && position == 4);
    CAPTURE(layer, position);
    CHECK(cell.at("restored").get<double>() == (restores ? 1.0 : 0.0));
  }
  // The metric is the logit difference of the two answers, as a forward pass here computes it.
  auto m = test::load_model("gpt_neo", model);
  const auto diff = [&](const std::vector<std::int64_t>& ids) {
    const at::Tensor logits = reference_logits(*m, ids, HookSet())[0][-1];
    return (logits[2] - logits[5]).item<double>();
  };
  CHECK(report.at("clean_metric").get<double>() == Approx(diff({2, 1, 3, 4, 6})).epsilon(1e-6));
  CHECK(report.at("corrupted_metric").get<double>() == Approx(diff({5, 1, 3, 4, 6})).epsilon(1e-6));
  CHECK(fs::file_size(tmp / "sweep" / "patch_sweep.png") > 1000);
  CHECK(test::read_file(tmp / "sweep" / "patch_sweep.svg").find("<svg") != std::string::npos);
  CHECK(test::read_file(tmp / "sweep" / "patch_sweep.csv").rfind("layer,position,label,logit-diff,restored\n0,0,", 0) == 0);

  // Layers x heads of hook_z, by KL: layer 0's head carries the token, layer 1's does nothing.
  report = sweep("--point attn.hook_z --by head --metric kl");
  REQUIRE(report.at("cells").size() == 2);
  CHECK(report["cells"][0].at("restored").get<double>() == Approx(1.0).margin(1e-9));
  CHECK(report["cells"][1].at("restored").get<double>() == Approx(0.0).margin(1e-9));
  const at::Tensor clean = at::log_softmax(reference_logits(*m, {2, 1, 3, 4, 6}, HookSet())[0][-1].to(at::kDouble), -1);
  const at::Tensor corrupted = at::log_softmax(reference_logits(*m, {5, 1, 3, 4, 6}, HookSet())[0][-1].to(at::kDouble), -1);
  CHECK(report.at("corrupted_metric").get<double>() ==
        Approx((clean.exp() * (clean - corrupted)).sum().item<double>()).epsilon(1e-6));

  for (const auto& [args, why] : std::vector<std::pair<std::string, std::string>>{
           {"--by head", "has no head dim"},
           {"--point hook_nothing", "the model has no blocks.0.hook_nothing"},
           {"--metric loss", "--metric must be logit-diff or kl"},
           {"--layers 7", "--layers 7: the model has layers 0-1"},
           {"--answer-id 3 --wrong-id 3", "both predict"}}) {
    CAPTURE(args);
    CHECK(test::run_hooklens(fmt::format("patch-sweep --model '{}' --clean-ids 2,1,3,4,6 --corrupted-ids 5,1,3,4,6 "
                                         "--out '{}' {}",
                                         model.string(), (tmp / "bad").string(), args),
                             tmp / "bad.log") == 2);
    CHECK_THAT(test::read_file(tmp / "bad.log"), Catch::Contains(why));
  }
  CHECK(test::run_hooklens(fmt::format("patch-sweep --model '{}' --clean-ids 2,1,3 --corrupted-ids 5,1 --out '{}'",
                                       model.string(), (tmp / "bad").string()),
                           tmp / "bad.log") == 2);
  CHECK_THAT(test::read_file(tmp / "bad.log"), Catch::Contains("needs the same length"));
  CHECK_FALSE(fs::exists(tmp / "bad"));
}

TEST_CASE("steering adds the scaled vector where the site says", "[interventions]") {
  test::TempDir tmp;
  const fs::path neo = kModels / "toy-neo";
  auto model = test::load_model("gpt_neo", neo);
  const auto ids = model->tokenizer()->encode("Tom liked to run in the school.");
  const at::Tensor v = at::linspace(-1.0, 1.0, model->info().d_model, at::kFloat);
  hooklens::write_safetensors(tmp / "v.safetensors", {{"toward", v}, {"other", v * 2}}, {});
  const double scale = 3.5;

  RunSettings s = settings(neo, tmp / "steered", {"blocks.1.hook_resid_pre", std::string(names::logits)});
  s.prompt_ids = {fmt::format("{}", fmt::join(ids, ","))};
  s.interventions.steer = {fmt::format("blocks.1.hook_resid_pre[pos=2:5]={}:toward*{}", (tmp / "v.safetensors").string(), scale)};
  capture(s);

  // The same change, made by a hook of this test: rows 2-4 plus scale * v.
  HookSet hooks;
  hooks.add({{"blocks.1.hook_resid_pre"}}, [&](std::string_view, const CaptureContext&, at::Tensor& t) {
    t = t.clone();
    t.narrow(1, 2, 3).add_(v * float(scale));
  });
  CHECK(same(logits_of(tmp / "steered"), reference_logits(*model, ids, hooks)));
  // The captured point shows the steered value (interventions run before captures).
  const at::Tensor resid = captures_of(tmp / "steered", "blocks.1.hook_resid_pre").at(0);
  test::Recorder plain({"blocks.1.hook_resid_pre"});
  reference_logits(*model, ids, plain.hooks);
  const at::Tensor added = resid - plain.at("blocks.1.hook_resid_pre");
  CHECK(test::max_abs_diff(added.narrow(1, 2, 3), (v * float(scale)).expand({1, 3, v.size(0)})) < 1e-5);
  CHECK(added.narrow(1, 0, 2).abs().max().item<double>() == 0.0);
  CHECK(added.narrow(1, 5, added.size(1) - 5).abs().max().item<double>() == 0.0);

  SECTION("a vector of another size, or an ambiguous file, is refused") {
    hooklens::write_safetensors(tmp / "short.safetensors", {{"v", at::ones({5})}}, {});
    s.out = (tmp / "bad").string();
    s.interventions.steer = {fmt::format("blocks.1.hook_resid_pre={}", (tmp / "short.safetensors").string())};
    CHECK_THROWS_WITH(capture(s), Catch::Contains("the vector has 5 elements, blocks.1.hook_resid_pre's d_model is 64"));
    s.interventions.steer = {fmt::format("blocks.1.hook_resid_pre={}", (tmp / "v.safetensors").string())};
    CHECK_THROWS_WITH(capture(s), Catch::Contains("holds 2 tensors: name one"));
  }
}

TEST_CASE("mean- and resample-ablation take their values from the dataset", "[interventions]") {
  test::TempDir tmp;
  const fs::path neo = kModels / "toy-neo";
  auto model = test::load_model("gpt_neo", neo);
  const std::string z = "blocks.1.attn.hook_z";
  const int head = 3;
  // The dataset: three prompts' captures of hook_z (lengths differ).
  RunSettings data = settings(neo, tmp / "data", {z, "blocks.2.hook_resid_post"});
  data.prompts = {"Tom liked to run in the school.", "One morning, Sam found a blue key in the field.",
                  "Lucy said, \"What a pink map!\""};
  capture(data);
  const auto zs = captures_of(tmp / "data", z);
  REQUIRE(zs.size() == 3);
  const auto ids = model->tokenizer()->encode("Once upon a time, there was a little cat named Tom.");
  const std::string ids_text = fmt::format("{}", fmt::join(ids, ","));

  // The model's logits with the head's hook_z replaced by `mean` at every position, computed here.
  const auto with_head_mean = [&](const at::Tensor& mean) {
    HookSet hooks;
    hooks.add({{z}}, [&](std::string_view, const CaptureContext&, at::Tensor& t) {
      t = t.clone();
      t.select(2, head).copy_(mean.expand({t.size(0), t.size(1), mean.size(0)}));
    });
    return reference_logits(*model, ids, hooks);
  };

  SECTION("mean of a head over every position of every sequence") {
    at::Tensor sum = at::zeros({zs[0].size(3)}, at::kDouble);
    std::int64_t positions = 0;
    for (const auto& t : zs) {
      sum += t.select(2, head).to(at::kDouble).sum(at::IntArrayRef{0, 1});
      positions += t.size(1);
    }
    const at::Tensor mean = (sum / double(positions)).to(at::kFloat);
    RunSettings s = settings(neo, tmp / "ablated", {std::string(names::logits)});
    s.prompt_ids = {ids_text};
    s.interventions.mean_ablate = {fmt::format("{}[head={}]", z, head)};
    s.interventions.ablate_from = (tmp / "data").string();
    capture(s);
    CHECK(test::max_abs_diff(logits_of(tmp / "ablated"), with_head_mean(mean)) < 1e-6);
    HookSet none;
    CHECK(test::max_abs_diff(logits_of(tmp / "ablated"), reference_logits(*model, ids, none)) > 1e-3);
    CHECK(hooklens::RunReader(tmp / "ablated").manifest().at("interventions").at(0).at("text").get<std::string>().find(
              fmt::format("means of {} positions", positions)) != std::string::npos);
  }
  SECTION("mean of the residual stream's component along a direction") {
    const std::string resid = "blocks.2.hook_resid_post";
    const at::Tensor d = at::cos(at::arange(model->info().d_model, at::kFloat));
    hooklens::write_safetensors(tmp / "d.safetensors", {{"d", d}}, {});
    const at::Tensor unit = d / d.norm();
    double sum = 0;
    std::int64_t positions = 0;
    for (const auto& t : captures_of(tmp / "data", resid)) {
      sum += (t.to(at::kDouble) * unit.to(at::kDouble)).sum(-1).sum().item<double>();
      positions += t.size(1);
    }
    const float mean = float(sum / double(positions));
    RunSettings s = settings(neo, tmp / "ablated", {std::string(names::logits)});
    s.prompt_ids = {ids_text};
    s.interventions.mean_ablate = {fmt::format("{}[pos=1:]@{}", resid, (tmp / "d.safetensors").string())};
    s.interventions.ablate_from = (tmp / "data").string();
    capture(s);
    HookSet hooks;
    hooks.add({{resid}}, [&](std::string_view, const CaptureContext&, at::Tensor& t) {
      t = t.clone();
      at::Tensor rows = t.narrow(1, 1, t.size(1) - 1);
      const at::Tensor along = (rows * unit).sum(-1, true);
      rows.add_((mean - along) * unit);
    });
    CHECK(test::max_abs_diff(logits_of(tmp / "ablated"), reference_logits(*model, ids, hooks)) < 1e-5);
  }
  SECTION("means from a text file: forward passes over its sequences") {
    const fs::path text = tmp / "text.txt";
    hooklens::write_text_file(text, "Tom liked to run in the school. One morning, Sam found a blue key in the field. "
                                    "Lucy said, \"What a pink map! I will keep the map.\" Then Tom met Ivy.\n");
    const auto all = model->tokenizer()->encode(test::read_file(text));
    const std::int64_t len = 8;
    test::Recorder rec({z});
    at::Tensor sum = at::zeros({zs[0].size(3)}, at::kDouble);
    std::int64_t positions = 0;
    for (std::int64_t start = 0; start + len <= std::int64_t(all.size()) && start / len < 3; start += len) {
      reference_logits(*model, std::vector<std::int64_t>(all.begin() + start, all.begin() + start + len), rec.hooks);
      sum += rec.at(z).select(2, head).to(at::kDouble).sum(at::IntArrayRef{0, 1});
      positions += len;
    }
    REQUIRE(positions == 3 * len);
    const at::Tensor mean = (sum / double(positions)).to(at::kFloat);
    RunSettings s = settings(neo, tmp / "ablated", {std::string(names::logits)});
    s.prompt_ids = {ids_text};
    s.interventions.mean_ablate = {fmt::format("{}[head={}]", z, head)};
    s.interventions.ablate_from = text.string();
    s.interventions.ablate_seq_len = len;
    s.interventions.ablate_sequences = 3;
    capture(s);
    CHECK(test::max_abs_diff(logits_of(tmp / "ablated"), with_head_mean(mean)) < 1e-6);
  }
  SECTION("resample: one other sequence's values at the same positions, drawn by the seed") {
    // A prompt no longer than the shortest sequence, so that every sequence covers its positions.
    const std::vector<std::int64_t> short_ids(ids.begin(), ids.begin() + 6);
    RunSettings s = settings(neo, tmp / "resampled", {z, std::string(names::logits)});
    s.prompt_ids = {fmt::format("{}", fmt::join(short_ids, ","))};
    s.interventions.resample_ablate = {fmt::format("{}[head={}]", z, head)};
    s.interventions.ablate_from = (tmp / "data").string();
    std::set<int> drawn;
    for (std::uint64_t seed : {0, 1, 2, 3, 4, 5, 6, 7}) {
      s.seed = seed;
      s.overwrite = true;
      capture(s);
      const at::Tensor got = captures_of(tmp / "resampled", z).at(0);
      int from = -1;
      for (int j = 0; j < 3; ++j)
        if (same(got.select(2, head), zs[std::size_t(j)].narrow(1, 0, 6).select(2, head))) from = j;
      REQUIRE(from >= 0);  // the head's value is one sequence's, whole
      drawn.insert(from);
      HookSet hooks;
      hooks.add({{z}}, [&](std::string_view, const CaptureContext&, at::Tensor& t) {
        t = t.clone();
        t.select(2, head).copy_(zs[std::size_t(from)].narrow(1, 0, t.size(1)).select(2, head));
      });
      CHECK(same(logits_of(tmp / "resampled"), reference_logits(*model, short_ids, hooks)));
    }
    CHECK(drawn.size() > 1);  // the seed chooses
  }
  SECTION("refusals") {
    RunSettings s = settings(neo, tmp / "bad", {std::string(names::logits)});
    s.prompt_ids = {ids_text};
    s.interventions.mean_ablate = {z};
    CHECK_THROWS_WITH(capture(s), Catch::Contains("need --ablate-from RUN or TEXT_FILE"));
    s.interventions.ablate_from = (tmp / "data").string();
    s.interventions.mean_ablate = {"blocks.1.attn.hook_pattern"};
    CHECK_THROWS_WITH(capture(s), Catch::Contains("is not a point of positions"));
    s.interventions.mean_ablate = {"blocks.3.hook_resid_post"};
    CHECK_THROWS_WITH(capture(s), Catch::Contains("has no capture of blocks.3.hook_resid_post"));
    s.interventions.mean_ablate = {z + "@" + (tmp / "nothing.safetensors").string()};
    CHECK_THROWS_WITH(capture(s), Catch::Contains("a direction applies to a point [batch, pos, d]"));
    s.interventions.mean_ablate.clear();
    s.interventions.resample_ablate = {z};  // a prompt longer than every sequence of the data
    s.prompt_ids = {ids_text + "," + ids_text};
    CHECK_THROWS_WITH(capture(s), Catch::Contains("positions, this run needs"));
  }
}

TEST_CASE("--ablate takes a site too, and the manifest names every intervention", "[interventions]") {
  test::TempDir tmp;
  const fs::path neo = kModels / "toy-neo";
  auto model = test::load_model("gpt_neo", neo);
  const auto ids = model->tokenizer()->encode("Tom liked to run in the school.");
  RunSettings s = settings(neo, tmp / "run", {std::string(names::logits)});
  s.prompt_ids = {fmt::format("{}", fmt::join(ids, ","))};
  s.interventions.ablate = {"1.3", "blocks.2.mlp.hook_post[neuron=7:9,pos=-1]"};
  capture(s);
  HookSet hooks;
  hooks.add({{"blocks.1.attn.hook_z"}}, [](std::string_view, const CaptureContext&, at::Tensor& t) {
    t = t.clone();
    t.select(2, 3).zero_();
  });
  hooks.add({{"blocks.2.mlp.hook_post"}}, [](std::string_view, const CaptureContext&, at::Tensor& t) {
    t = t.clone();
    t.narrow(1, t.size(1) - 1, 1).narrow(2, 7, 2).zero_();
  });
  CHECK(same(logits_of(tmp / "run"), reference_logits(*model, ids, hooks)));
  const json m = hooklens::RunReader(tmp / "run").manifest();
  CHECK(m.at("ablations") == json({"1.3", "blocks.2.mlp.hook_post[neuron=7:9,pos=-1]"}));
  REQUIRE(m.at("interventions").size() == 2);
  CHECK(m["interventions"][0] == json({{"kind", "zero_ablate"}, {"site", "blocks.1.attn.hook_z[head=3]"},
                                       {"hook", "blocks.1.attn.hook_z"}, {"source", nullptr}, {"applied", 1},
                                       {"text", "zero-ablated blocks.1.attn.hook_z[head=3]"}}));
  CHECK(m["interventions"][1].at("site") == "blocks.2.mlp.hook_post[neuron=7:9,pos=-1]");
}
