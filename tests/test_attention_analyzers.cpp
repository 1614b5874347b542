// The attention_stats and head_detectors analyzer plugins: statistics against direct computations
// on known patterns, detectors on a transformer built here with planted heads, and both analyzers
// offline over run directories written by `hooklens capture|generate`.
#include "test_util.h"

#include <hooklens/analysis.h>
#include <hooklens/analyzer.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/run.h>
#include <hooklens/transformer.h>

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>
#include <set>
#include <vector>

using nlohmann::json;
using hooklens::AttentionKind;

namespace {

using Matrix = std::vector<std::vector<double>>;  // [query][key]

std::shared_ptr<hooklens::Analyzer> analyzer(const std::string& name) {
  return std::static_pointer_cast<hooklens::Analyzer>(
      hooklens::PluginRegistry::create_from(test::plugin_file(name), "analyzer"));
}

hooklens::ModelInfo model_info(std::vector<AttentionKind> layers, int heads, int window = 0) {
  hooklens::ModelInfo m;
  m.adapter = "test";
  m.architecture = "test";
  m.path = "test-model";
  m.n_layers = int(layers.size());
  m.n_heads = m.n_kv_heads = heads;
  m.d_model = 8 * heads;
  m.d_head = 8;
  m.d_mlp = 4;
  m.vocab_size = 100;
  m.n_ctx = 64;
  m.layer_attention = std::move(layers);
  m.window_size = window;
  return m;
}

json run_json(const hooklens::ModelInfo& model, const std::vector<std::vector<std::int64_t>>& prompts,
              json options = json::object()) {
  json run = {{"model", model.to_json()}, {"prompts", json::array()}, {"mode", "none"}, {"options", options}};
  for (const auto& ids : prompts) run["prompts"].push_back({{"text", ""}, {"ids", ids}, {"tokens", json::array()}, {"source", "prompt"}});
  return run;
}

// [1, heads, queries, keys] from per-head matrices.
at::Tensor pattern_tensor(const std::vector<Matrix>& heads) {
  const std::int64_t H = std::int64_t(heads.size()), Q = std::int64_t(heads[0].size()), K = std::int64_t(heads[0][0].size());
  at::Tensor t = at::zeros({1, H, Q, K});
  auto a = t.accessor<float, 4>();
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t q = 0; q < Q; ++q)
      for (std::int64_t k = 0; k < K; ++k) a[0][h][q][k] = float(heads[h][q][k]);
  return t;
}

Matrix from_tensor(const at::Tensor& pattern, std::int64_t head) {
  const at::Tensor p = pattern.to(at::kDouble).contiguous();
  Matrix m(std::size_t(p.size(2)), std::vector<double>(std::size_t(p.size(3))));
  auto a = p.accessor<double, 4>();
  for (std::size_t q = 0; q < m.size(); ++q)
    for (std::size_t k = 0; k < m[q].size(); ++k) m[q][k] = a[0][head][std::int64_t(q)][std::int64_t(k)];
  return m;
}

// Causal rows: row q puts weights(q) on keys 0..q.
Matrix causal(std::int64_t T, const std::function<std::vector<double>(std::int64_t q)>& weights) {
  Matrix m(std::size_t(T), std::vector<double>(std::size_t(T), 0.0));
  for (std::int64_t q = 0; q < T; ++q) {
    const std::vector<double> w = weights(q);
    for (std::size_t k = 0; k < w.size(); ++k) m[std::size_t(q)][k] = w[k];
  }
  return m;
}

hooklens::CaptureContext ctx_of(int layer, std::int64_t query_offset = 0, std::int64_t key_offset = 0, int step = 0) {
  hooklens::CaptureContext c = test::context(0, hooklens::Phase::prefill, step, -1, layer, query_offset);
  c.key_offset = key_offset;
  return c;
}

// ---- attention statistics computed directly --------------------------------------------------

struct Stats {
  std::int64_t rows = 0;
  double entropy = 0, normalized_entropy = 0, row_std = 0, max_weight = 0, self_mass = 0, other_mass = 0;
};

// Mean statistics of the rows of `m` (row r = position q0 + r, column c = position k0 + c) over the
// captured keys each query may see: causal, or within `window` when window > 0.
Stats direct_stats(const Matrix& m, std::int64_t q0, std::int64_t k0, int window = 0) {
  Stats s;
  for (std::size_t r = 0; r < m.size(); ++r) {
    const std::int64_t q = q0 + std::int64_t(r);
    std::vector<double> w;
    double self = 0;
    for (std::size_t c = 0; c < m[r].size(); ++c) {
      const std::int64_t k = k0 + std::int64_t(c);
      if (k > q || (window > 0 && k <= q - window)) continue;
      w.push_back(m[r][c]);
      if (k == q) self = m[r][c];
    }
    if (w.size() < 2) continue;
    double h = 0, sum = 0, max = 0;
    for (double v : w) h -= v > 0 ? v * std::log(v) : 0.0, sum += v, max = std::max(max, v);
    const double mean = sum / double(w.size());
    double var = 0;
    for (double v : w) var += (v - mean) * (v - mean);
    ++s.rows;
    s.entropy += h;
    s.normalized_entropy += h / std::log(double(w.size()));
    s.row_std += std::sqrt(var / double(w.size()));
    s.max_weight += max;
    s.self_mass += self;
    s.other_mass += sum - self;
  }
  for (double* v : {&s.entropy, &s.normalized_entropy, &s.row_std, &s.max_weight, &s.self_mass, &s.other_mass})
    *v /= double(s.rows);
  return s;
}

void check_head(const json& head, const Stats& expected) {
  INFO(head.dump());
  CHECK(head["rows"] == expected.rows);
  CHECK(head["entropy"].get<double>() == Approx(expected.entropy).margin(1e-6));
  CHECK(head["normalized_entropy"].get<double>() == Approx(expected.normalized_entropy).margin(1e-6));
  CHECK(head["row_std"].get<double>() == Approx(expected.row_std).margin(1e-6));
  CHECK(head["max_weight"].get<double>() == Approx(expected.max_weight).margin(1e-6));
  CHECK(head["self_mass"].get<double>() == Approx(expected.self_mass).margin(1e-6));
  CHECK(head["other_mass"].get<double>() == Approx(expected.other_mass).margin(1e-6));
}

const json& head_of(const json& report, int layer, int head) {
  for (const json& h : report["heads"])
    if (h["layer"] == layer && h["head"] == head) return h;
  FAIL("no head " << layer << "." << head << " in " << report.dump());
  static const json none;
  return none;
}

// Every number in `j` is finite (nlohmann writes NaN as null, so check the values themselves).
void require_finite(const json& j) {
  if (j.is_number_float()) REQUIRE(std::isfinite(j.get<double>()));
  if (j.is_structured())
    for (const json& item : j) require_finite(item);
}

json analyze(const std::string& name, const json& run, const std::vector<std::pair<hooklens::CaptureContext, at::Tensor>>& captures) {
  auto a = analyzer(name);
  a->begin(run);
  for (const auto& [ctx, tensor] : captures) a->observe("blocks." + std::to_string(ctx.layer) + ".attn.hook_pattern", ctx, tensor);
  return a->finish(run);
}

}  // namespace

TEST_CASE("attention_stats: statistics of known patterns") {
  const std::int64_t T = 8;
  const hooklens::ModelInfo model = model_info({AttentionKind::causal, AttentionKind::local}, 2, 3);
  const json run = run_json(model, {});

  SECTION("uniform causal rows: normalized entropy 1, uniform; one-hot rows: entropy 0, sharp") {
    const Matrix uniform = causal(T, [](std::int64_t q) { return std::vector<double>(std::size_t(q + 1), 1.0 / double(q + 1)); });
    const Matrix one_hot = causal(T, [](std::int64_t q) {
      std::vector<double> w(std::size_t(q + 1), 0.0);
      w[0] = 1;
      return w;
    });
    const json report = analyze("attention_stats", run, {{ctx_of(0), pattern_tensor({uniform, one_hot})}});
    REQUIRE(report["analyzer"] == "attention_stats");
    const json& u = head_of(report, 0, 0);
    CHECK(u["normalized_entropy"].get<double>() == Approx(1.0).margin(1e-6));
    CHECK(u["row_std"].get<double>() == Approx(0.0).margin(1e-6));
    CHECK(u["label"] == "uniform");
    check_head(u, direct_stats(uniform, 0, 0));
    const json& o = head_of(report, 0, 1);
    CHECK(o["entropy"].get<double>() == Approx(0.0).margin(1e-7));
    CHECK(o["max_weight"].get<double>() == Approx(1.0).margin(1e-7));
    CHECK(o["self_mass"].get<double>() == Approx(0.0).margin(1e-7));  // every counted row (q >= 1) looks at key 0
    CHECK(o["label"] == "sharp");
    check_head(o, direct_stats(one_hot, 0, 0));
  }

  SECTION("a 3-row pattern checked by hand") {
    const Matrix m = {{1, 0, 0}, {0.25, 0.75, 0}, {0.5, 0.25, 0.25}};
    const json report = analyze("attention_stats", run, {{ctx_of(0), pattern_tensor({m, m})}});
    const json& h = head_of(report, 0, 0);
    // Row 0 sees one key and does not count. Row 1: entropy -(.25 ln .25 + .75 ln .75) = 0.562335,
    // normalized by ln 2: 0.811278, std 0.25, max .75, self .75. Row 2: entropy 1.039721, by ln 3:
    // 0.946395, std sqrt(1/72) = 0.117851, max .5, self .25.
    CHECK(h["rows"] == 2);
    CHECK(h["entropy"].get<double>() == Approx((0.5623351446 + 1.0397207708) / 2).margin(1e-6));
    CHECK(h["normalized_entropy"].get<double>() == Approx((0.8112781245 + 0.9463946304) / 2).margin(1e-6));
    CHECK(h["row_std"].get<double>() == Approx((0.25 + 0.1178511302) / 2).margin(1e-6));
    CHECK(h["max_weight"].get<double>() == Approx(0.625).margin(1e-6));
    CHECK(h["self_mass"].get<double>() == Approx(0.5).margin(1e-6));
    CHECK(h["other_mass"].get<double>() == Approx(0.5).margin(1e-6));
    CHECK(h["label"] == "uniform");  // 0.878836 > 0.85
    CHECK(report["thresholds"]["sharp_below"] == 0.3);
    CHECK(report["thresholds"]["uniform_above"] == 0.85);
  }

  SECTION("a sliced capture: rows from query_offset, columns from key_offset") {
    at::manual_seed(3);
    const at::Tensor full = at::softmax(at::rand({1, 2, T, T}) * 4, -1);  // causal mask applied below
    Matrix m0 = from_tensor(full, 0), m1 = from_tensor(full, 1);
    for (Matrix* m : {&m0, &m1})  // renormalise over keys <= query, as a causal model would
      for (std::int64_t q = 0; q < T; ++q) {
        double sum = 0;
        for (std::int64_t k = 0; k <= q; ++k) sum += (*m)[q][k];
        for (std::int64_t k = 0; k < T; ++k) (*m)[q][k] = k <= q ? (*m)[q][k] / sum : 0.0;
      }
    const std::int64_t q0 = 3, k0 = 2;
    const auto slice = [&](const Matrix& m) {
      Matrix s;
      for (std::int64_t q = q0; q < T; ++q) s.emplace_back(m[q].begin() + k0, m[q].end());
      return s;
    };
    const json report = analyze("attention_stats", run, {{ctx_of(0, q0, k0), pattern_tensor({slice(m0), slice(m1)})}});
    check_head(head_of(report, 0, 0), direct_stats(slice(m0), q0, k0));
    check_head(head_of(report, 0, 1), direct_stats(slice(m1), q0, k0));
    // Row q sees captured keys 2..q, so q = 3.. all count; self mass is the captured diagonal.
    CHECK(head_of(report, 0, 0)["rows"] == T - q0);
  }

  SECTION("a local-window layer: rows see only the window") {
    const int window = 3;
    const Matrix local = causal(T, [&](std::int64_t q) {
      std::vector<double> w(std::size_t(q + 1), 0.0);
      const std::int64_t n = std::min<std::int64_t>(q + 1, window);
      for (std::int64_t k = q - n + 1; k <= q; ++k) w[std::size_t(k)] = 1.0 / double(n);
      return w;
    });
    const json report = analyze("attention_stats", run, {{ctx_of(1), pattern_tensor({local, local})}});
    const json& h = head_of(report, 1, 0);
    CHECK(h["normalized_entropy"].get<double>() == Approx(1.0).margin(1e-6));  // uniform over the window
    CHECK(h["label"] == "uniform");
    check_head(h, direct_stats(local, 0, 0, window));
  }

  SECTION("averaging heads hides sharp heads") {
    const auto on_key = [&](bool self) {
      return causal(T, [self](std::int64_t q) {
        std::vector<double> w(std::size_t(q + 1), 0.0);
        w[self ? std::size_t(q) : 0] = 1;
        return w;
      });
    };
    const Matrix first = on_key(false), diagonal = on_key(true);
    // Layer 0: two sharp heads on different keys; layer 1 (local, window 3): the same head twice.
    const json report = analyze("attention_stats", run,
                                {{ctx_of(0), pattern_tensor({first, diagonal})}, {ctx_of(1), pattern_tensor({first, first})}});
    REQUIRE(report["layers"].size() == 2);
    const json& l0 = report["layers"][0];
    CHECK(l0["labels"]["sharp"] == 2);
    Matrix mean = first;
    for (std::int64_t q = 0; q < T; ++q)
      for (std::int64_t k = 0; k < T; ++k) mean[q][k] = (first[q][k] + diagonal[q][k]) / 2;
    const Stats averaged = direct_stats(mean, 0, 0);
    CHECK(l0["head_averaged"]["normalized_entropy"].get<double>() == Approx(averaged.normalized_entropy).margin(1e-6));
    CHECK(l0["head_averaged"]["label"] != "sharp");
    CHECK(l0["averaging_hides"] == true);
    CHECK(l0["mean_self_mass"].get<double>() == Approx(0.5).margin(1e-6));  // head 1: 1, head 0: 0
    // Layer 1: key 0 leaves the window from query 3 on, where the rows hold no weight at all.
    const json& l1 = report["layers"][1];
    CHECK(l1["averaging_hides"] == false);
    CHECK(l1["head_averaged"]["normalized_entropy"].get<double>() ==
          Approx(direct_stats(first, 0, 0, 3).normalized_entropy).margin(1e-6));
    require_finite(report);
  }

  SECTION("the steps option selects captures; bad options are usage errors") {
    const Matrix uniform = causal(T, [](std::int64_t q) { return std::vector<double>(std::size_t(q + 1), 1.0 / double(q + 1)); });
    const std::vector<std::pair<hooklens::CaptureContext, at::Tensor>> captures = {
        {ctx_of(0), pattern_tensor({uniform, uniform})},
        {ctx_of(0, T, 0, 1), at::ones({1, 2, 1, T + 1}) / double(T + 1)}};  // a decode step: one row
    CHECK(head_of(analyze("attention_stats", run, captures), 0, 0)["rows"] == T);
    json only0 = run;
    only0["options"] = {{"steps", "0"}};
    CHECK(head_of(analyze("attention_stats", only0, captures), 0, 0)["rows"] == T - 1);
    for (const json& bad : {json{{"steps", "zero"}}, json{{"steps", "1,,2"}}, json{{"colour", "red"}}}) {
      json r = run;
      r["options"] = bad;
      auto a = analyzer("attention_stats");
      CHECK_THROWS_AS(a->begin(r), hooklens::UsageError);
    }
  }
}

// ---- head detectors on a transformer with planted heads ---------------------------------------

namespace {

// Residual stream = [position one-hot (P) | token one-hot (V) | previous token one-hot (V)].
// RMS norm with unit weights only rescales a residual holding a fixed number of ones, so each
// head reads exact one-hot features. Layer 0: head 0 previous-token (writes the previous token into
// the third block), head 1 first-token, head 2 duplicate-token, head 3 nothing (uniform).
// Layer 1: head 0 induction (query token = key's previous token), head 1 self, heads 2-3 uniform.
constexpr std::int64_t P = 48, V = 40, D = P + 2 * V, DH = P + V, H = 4;

std::shared_ptr<hooklens::Model> planted_model() {
  hooklens::ModelInfo info;
  info.adapter = "test";
  info.architecture = "planted";
  info.path = "planted-test-model";
  info.n_layers = 2;
  info.n_heads = info.n_kv_heads = int(H);
  info.d_model = int(D);
  info.d_head = int(DH);
  info.d_mlp = 4;
  info.vocab_size = V;
  info.n_ctx = P;
  info.layer_attention = {AttentionKind::causal, AttentionKind::causal};
  info.bos_id = 0;

  const auto pos = [](std::int64_t p) { return p; };
  const auto tok = [](std::int64_t t) { return P + t; };
  const auto prev = [](std::int64_t t) { return P + V + t; };
  const auto dim = [](std::int64_t head, std::int64_t i) { return head * DH + i; };

  hooklens::TransformerWeights w;
  w.embed = at::zeros({V, D});
  w.pos_embed = at::zeros({P, D});
  for (std::int64_t t = 0; t < V; ++t) w.embed[t][tok(t)] = 1;
  for (std::int64_t p = 0; p < P; ++p) w.pos_embed[p][pos(p)] = 1;
  w.unembed = w.embed;
  w.lnf_w = at::ones({D});
  for (int l = 0; l < 2; ++l) {
    hooklens::LayerWeights lw;
    lw.ln1_w = lw.ln2_w = at::ones({D});
    lw.W_q = at::zeros({H * DH, D}), lw.W_k = at::zeros({H * DH, D}), lw.W_v = at::zeros({H * DH, D});
    lw.W_o = at::zeros({D, H * DH});
    lw.W_in = at::zeros({4, D}), lw.W_out = at::zeros({D, 4});
    w.layers.push_back(lw);
  }
  auto& l0 = w.layers[0];
  for (std::int64_t p = 0; p + 1 < P; ++p) {  // head 0: query p matches key p-1
    l0.W_q[dim(0, p)][pos(p)] = 1;
    l0.W_k[dim(0, p + 1)][pos(p)] = 1;
  }
  for (std::int64_t p = 0; p < P; ++p) l0.W_q[dim(1, 0)][pos(p)] = 1;  // head 1: every query matches key 0
  l0.W_k[dim(1, 0)][pos(0)] = 1;
  for (std::int64_t t = 0; t < V; ++t) {  // head 2: same token, minus the query itself
    l0.W_q[dim(2, P + t)][tok(t)] = 1;
    l0.W_k[dim(2, P + t)][tok(t)] = 1;
  }
  for (std::int64_t p = 0; p < P; ++p) {
    l0.W_q[dim(2, p)][pos(p)] = -2;
    l0.W_k[dim(2, p)][pos(p)] = 1;
  }
  // Head 0 copies its key's token into the previous-token block; 1/sqrt(D/2) undoes the norm's scale.
  for (std::int64_t t = 0; t < V; ++t) {
    l0.W_v[dim(0, P + t)][tok(t)] = 1;
    l0.W_o[prev(t)][dim(0, P + t)] = 1.0 / std::sqrt(double(D) / 2);
  }
  auto& l1 = w.layers[1];
  for (std::int64_t t = 0; t < V; ++t) {  // head 0: query token = the key's previous token
    l1.W_q[dim(0, P + t)][tok(t)] = 1;
    l1.W_k[dim(0, P + t)][prev(t)] = 1;
  }
  for (std::int64_t p = 0; p < P; ++p) {  // head 1: self
    l1.W_q[dim(1, p)][pos(p)] = 1;
    l1.W_k[dim(1, p)][pos(p)] = 1;
  }
  hooklens::TransformerSpec spec;
  spec.norm = hooklens::TransformerSpec::Norm::rms_norm;
  spec.activation = hooklens::TransformerSpec::Activation::relu;
  return hooklens::make_transformer(info, spec, std::move(w), nullptr);
}

// Pooled sums of the four scores, computed from their definitions on full patterns.
struct DirectScores {
  std::map<std::pair<int, int>, std::array<double, 4>> sum;
  std::array<std::int64_t, 4> queries{};

  void add(int layer, const at::Tensor& pattern, const std::vector<std::int64_t>& tok) {
    const std::int64_t T = std::int64_t(tok.size());
    for (std::int64_t h = 0; h < pattern.size(1); ++h) {
      const Matrix A = from_tensor(pattern, h);
      auto& s = sum[{layer, int(h)}];
      for (std::int64_t q = 1; q < T; ++q) s[0] += A[q][q - 1], s[3] += A[q][0];
      for (std::int64_t q = 0; q < T; ++q) {
        bool dup = false, ind = false;
        double dup_sum = 0, ind_sum = 0;
        for (std::int64_t j = 0; j < q; ++j)
          if (tok[j] == tok[q]) {
            dup = true, dup_sum += A[q][j];
            if (j < q - 1) ind = true, ind_sum += A[q][j + 1];
          }
        if (dup) s[1] += dup_sum;
        if (ind) s[2] += ind_sum;
        if (layer == 0 && h == 0) queries[1] += dup, queries[2] += ind;
      }
    }
    if (layer == 0) queries[0] += T - 1, queries[3] += T - 1;
  }
};

const char* const kScoreNames[4] = {"previous_token", "duplicate_token", "induction", "first_token"};

// Runs the planted model over `prompts` with head_detectors listening; checks its scores against
// DirectScores and returns the report.
json detect(hooklens::Model& model, const std::vector<std::vector<std::int64_t>>& prompts) {
  auto a = analyzer("head_detectors");
  a->begin(run_json(model.info(), prompts));
  DirectScores direct;
  hooklens::HookSet hooks;
  int prompt = 0;
  hooks.add({{"blocks.*.attn.hook_pattern"}}, [&](std::string_view name, const hooklens::CaptureContext& ctx, at::Tensor& t) {
    a->observe(name, ctx, t);
    direct.add(ctx.layer, t, prompts[std::size_t(prompt)]);
  });
  for (; prompt < int(prompts.size()); ++prompt) {
    hooklens::CaptureContext ctx;
    ctx.prompt = prompt;
    model.forward(at::tensor(prompts[std::size_t(prompt)], at::kLong).unsqueeze(0), hooks, ctx, nullptr);
  }
  const json report = a->finish(run_json(model.info(), prompts));
  require_finite(report);
  for (const auto& [where, sums] : direct.sum)
    for (int d = 0; d < 4; ++d) {
      const json& head = head_of(report, where.first, where.second);
      INFO(kScoreNames[d] << " of head " << where.first << "." << where.second);
      CHECK(head["queries"][kScoreNames[d]] == direct.queries[d]);
      CHECK(head[std::string(kScoreNames[d]) + "_score"].get<double>() ==
            Approx(sums[d] / double(direct.queries[d])).margin(1e-6));
    }
  return report;
}

// The planted head ranks first with score > 0.9; every other head stays below `others_below`.
void check_planted(const json& report, const char* score, int layer, int head, double others_below) {
  INFO(score << ": " << report["ranked"][score].dump());
  const json& ranked = report["ranked"][score];
  REQUIRE(ranked.size() == 8);  // 2 layers x 4 heads
  CHECK(ranked[0]["layer"] == layer);
  CHECK(ranked[0]["head"] == head);
  CHECK(ranked[0]["score"].get<double>() > 0.9);
  CHECK(ranked[1]["score"].get<double>() < others_below);
}

}  // namespace

TEST_CASE("head_detectors: the repeated random sequence") {
  const auto a = analyzer("head_detectors");
  hooklens::ModelInfo m = model_info({AttentionKind::causal}, 2);
  m.vocab_size = 40, m.n_ctx = 48, m.bos_id = 0, m.eos_id = 1, m.mask_id = 2;
  const auto prompts = a->extra_prompts(m, {{"seq_len", "16"}, {"seed", "7"}});
  REQUIRE(prompts.size() == 1);
  const auto& ids = prompts[0].ids;
  CHECK(prompts[0].source == "head_detectors: repeated random tokens (seed 7, 2 x 16)");
  REQUIRE(ids.size() == 33);
  CHECK(ids[0] == 0);
  const std::vector<std::int64_t> half(ids.begin() + 1, ids.begin() + 17);
  CHECK(std::vector<std::int64_t>(ids.begin() + 17, ids.end()) == half);
  CHECK(std::set<std::int64_t>(half.begin(), half.end()).size() == 16);  // distinct: one earlier occurrence each
  for (std::int64_t id : half) CHECK((id > 2 && id < 40));
  CHECK(a->extra_prompts(m, {{"seq_len", "16"}, {"seed", "7"}})[0].ids == ids);
  CHECK(a->extra_prompts(m, {{"seq_len", "16"}, {"seed", "8"}})[0].ids != ids);
  // Default 32 per half does not fit 48 positions: the longest that does (23) is used.
  CHECK(a->extra_prompts(m, json::object())[0].source == "head_detectors: repeated random tokens (seed 0, 2 x 23)");
  CHECK_THROWS_AS(a->extra_prompts(m, {{"seq_len", "24"}}), hooklens::UsageError);
  CHECK_THROWS_AS(a->extra_prompts(m, {{"seq_len", "x"}}), hooklens::UsageError);
  CHECK_THROWS_AS(a->extra_prompts(m, {{"colour", "red"}}), hooklens::UsageError);
  m.bos_id.reset();
  const auto no_bos = a->extra_prompts(m, {{"seq_len", "5"}})[0].ids;
  REQUIRE(no_bos.size() == 10);
  CHECK(no_bos[0] == no_bos[5]);
}

TEST_CASE("head_detectors: planted heads rank first") {
  const auto model = planted_model();
  const auto extra = analyzer("head_detectors")->extra_prompts(model->info(), {{"seq_len", "16"}, {"seed", "7"}});
  REQUIRE(extra.size() == 1);
  // A natural sequence: repeats at different distances, no token twice in a row.
  const std::vector<std::int64_t> natural = {0, 5, 9, 12, 5, 9, 7, 12, 5, 9, 12, 3, 7, 21, 5};

  SECTION("on the repeated random sequence") {
    const json report = detect(*model, {extra[0].ids});
    CHECK(head_of(report, 0, 0)["queries"]["previous_token"] == 32);
    CHECK(head_of(report, 0, 0)["queries"]["duplicate_token"] == 16);
    CHECK(head_of(report, 0, 0)["queries"]["induction"] == 16);
    check_planted(report, "previous_token", 0, 0, 0.2);
    check_planted(report, "first_token", 0, 1, 0.2);
    check_planted(report, "duplicate_token", 0, 2, 0.2);
    check_planted(report, "induction", 1, 0, 0.2);
    CHECK(head_of(report, 1, 1)["normalized_entropy"].get<double>() < 0.01);  // the self head is sharp...
    CHECK(head_of(report, 1, 1)["previous_token_score"].get<double>() < 0.01);  // ...but no detector's
  }
  SECTION("on a natural sequence, and pooled with the repeated one") {
    check_planted(detect(*model, {natural}), "previous_token", 0, 0, 0.3);
    const json pooled = detect(*model, {natural, extra[0].ids});
    check_planted(pooled, "first_token", 0, 1, 0.3);
    check_planted(pooled, "duplicate_token", 0, 2, 0.3);
    check_planted(pooled, "induction", 1, 0, 0.3);
  }
}

TEST_CASE("head_detectors: slices, skipped captures, head mapping") {
  const hooklens::ModelInfo model = model_info({AttentionKind::causal}, 2);
  const std::vector<std::int64_t> tok = {0, 4, 5, 4, 6, 5, 4, 7};
  const std::int64_t T = std::int64_t(tok.size());
  at::manual_seed(5);
  at::Tensor full = at::rand({1, 2, T, T}) + 0.1;
  for (std::int64_t q = 0; q < T; ++q) full.select(2, q).narrow(-1, q + 1, T - q - 1).zero_();
  full = full / full.sum(-1, true);
  const json run = run_json(model, {tok});

  SECTION("a sliced capture scores only queries whose keys were all captured") {
    const std::int64_t q0 = 3, k0 = 2;
    const at::Tensor sliced = full.narrow(2, q0, T - q0).narrow(3, k0, T - k0).contiguous();
    const json report = analyze("head_detectors", run, {{ctx_of(0, q0, k0), sliced}});
    for (int h = 0; h < 2; ++h) {
      const Matrix A = from_tensor(full, h);
      // Queries 3..7; previous-token keys q-1 >= 2 always captured; first-token key 0 never.
      double prev = 0, dup = 0, ind = 0;
      std::int64_t n_dup = 0, n_ind = 0;
      for (std::int64_t q = q0; q < T; ++q) {
        prev += A[q][q - 1];
        std::vector<std::int64_t> d, i;
        for (std::int64_t j = 0; j < q; ++j)
          if (tok[j] == tok[q]) {
            d.push_back(j);
            if (j < q - 1) i.push_back(j + 1);
          }
        const auto all_captured = [&](const std::vector<std::int64_t>& keys) {
          return !keys.empty() && std::all_of(keys.begin(), keys.end(), [&](std::int64_t k) { return k >= k0; });
        };
        if (all_captured(d)) {
          ++n_dup;
          for (std::int64_t j : d) dup += A[q][j];
        }
        if (all_captured(i)) {
          ++n_ind;
          for (std::int64_t j : i) ind += A[q][j];
        }
      }
      const json& head = head_of(report, 0, h);
      CHECK(head["queries"]["previous_token"] == T - q0);
      CHECK(head["queries"]["first_token"] == 0);
      CHECK(head["first_token_score"].is_null());
      CHECK(head["previous_token_score"].get<double>() == Approx(prev / double(T - q0)).margin(1e-6));
      // Token 4 at 3 and 6 has an occurrence at 1 (not captured); 5 at 5 has one at 2 (captured).
      CHECK(n_dup == 1);
      CHECK(head["queries"]["duplicate_token"] == n_dup);
      CHECK(head["duplicate_token_score"].get<double>() == Approx(dup / double(n_dup)).margin(1e-6));
      CHECK(head["queries"]["induction"] == n_ind);
      CHECK(head["induction_score"].get<double>() == Approx(ind / double(n_ind)).margin(1e-6));
    }
    CHECK(report["skipped"]["queries_keys_not_captured"]["first_token"] == T - q0);
    require_finite(report);
  }

  SECTION("decode steps and unconditional passes are skipped and counted") {
    hooklens::CaptureContext uncond = ctx_of(0);
    uncond.pass = 1;
    const json report = analyze("head_detectors", run,
                                {{ctx_of(0), full}, {ctx_of(0, T, 0, 1), at::ones({1, 2, 1, T + 1}) / double(T + 1)}, {uncond, full}});
    CHECK(report["scored_captures"] == 1);
    CHECK(report["skipped"]["captures"]["not_step_0"] == 1);
    CHECK(report["skipped"]["captures"]["unconditional_pass"] == 1);
    CHECK(head_of(report, 0, 1)["queries"]["previous_token"] == T - 1);
  }

  SECTION("head-sliced captures need the run's capture.heads") {
    const at::Tensor head1 = full.narrow(1, 1, 1).contiguous();
    CHECK_THROWS_AS(analyze("head_detectors", run, {{ctx_of(0), head1}}), hooklens::Error);
    json named = run;
    named["capture"] = {{"heads", {1}}};
    const json report = analyze("head_detectors", named, {{ctx_of(0), head1}});
    REQUIRE(report["heads"].size() == 1);
    CHECK(report["heads"][0]["head"] == 1);
    const Matrix A = from_tensor(full, 1);
    double prev = 0;
    for (std::int64_t q = 1; q < T; ++q) prev += A[q][q - 1];
    CHECK(report["heads"][0]["previous_token_score"].get<double>() == Approx(prev / double(T - 1)).margin(1e-6));
  }
}

// ---- offline over run directories -------------------------------------------------------------

namespace {

// Runs `bin/hooklens ARGS` capturing the patterns into `dir` and returns the run's reader.
hooklens::RunReader hooklens_run(const std::string& args, const test::fs::path& dir) {
  const test::fs::path log = dir.string() + ".log";
  const int status = test::run_hooklens(fmt::format("{} --hooks 'blocks.*.attn.hook_pattern' --out '{}'", args, dir.string()), log);
  INFO(args << "\n" << test::read_file(log));
  REQUIRE(status == 0);
  return hooklens::RunReader(dir);
}

// What begin() gets from a run directory, and the report after every capture in manifest order.
json analyze_offline(const std::string& name, hooklens::RunReader& reader) {
  const json& manifest = reader.manifest();
  json run = {{"model", manifest["model"]}, {"prompts", manifest["prompts"]},
              {"mode", manifest["generation"]["mode"]}, {"options", json::object()}};
  if (manifest.contains("capture")) run["capture"] = manifest["capture"];
  auto a = analyzer(name);
  a->begin(run);
  for (std::size_t i = 0; i < reader.capture_count(); ++i) {
    const hooklens::CaptureEntry& entry = reader.entry(i);
    a->observe(entry.hook, entry.context, reader.load(i).to(at::kFloat));
  }
  const json report = a->finish(manifest);
  require_finite(report);
  return report;
}

// Rows of a layer's captures that see at least two captured keys: keys key_offset..q (tiny-neo-a's
// local layers have a window of 8, which never leaves fewer than two).
std::int64_t counted_rows(hooklens::RunReader& reader, int layer) {
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < reader.capture_count(); ++i) {
    const json& c = reader.capture(i);
    if (c["layer"] != layer) continue;
    const std::int64_t q0 = c["query_offset"], k0 = c["key_offset"], Q = c["shape"][2];
    for (std::int64_t q = q0; q < q0 + Q; ++q) rows += q - k0 + 1 >= 2;
  }
  return rows;
}

}  // namespace

TEST_CASE("both analyzers over run directories of tiny-neo-a", "[fixtures]") {
  const test::fs::path model = test::fixtures() / "tiny-neo-a";
  test::TempDir tmp;

  SECTION("capture: every head of every layer, finite") {
    auto reader = hooklens_run(fmt::format("capture --model '{}' --prompt 'Once upon a time there was a cat. Once upon a time'",
                                           model.string()), tmp / "capture");
    const std::int64_t T = std::int64_t(reader.manifest()["prompts"][0]["ids"].size());
    const json stats = analyze_offline("attention_stats", reader);
    REQUIRE(stats["heads"].size() == 16);
    REQUIRE(stats["layers"].size() == 4);
    for (const json& h : stats["heads"]) {
      CHECK(h["rows"] == T - 1);
      CHECK(h["normalized_entropy"].get<double>() >= 0);
      CHECK(h["normalized_entropy"].get<double>() <= 1 + 1e-6);
      CHECK(h["self_mass"].get<double>() + h["other_mass"].get<double>() == Approx(1.0).margin(1e-4));
    }
    for (const json& l : stats["layers"]) {
      CHECK(l["labels"]["sharp"].get<int>() + l["labels"]["medium"].get<int>() + l["labels"]["uniform"].get<int>() == 4);
      CHECK(l["head_averaged"]["rows"] == T - 1);
    }
    const json heads = analyze_offline("head_detectors", reader);
    REQUIRE(heads["heads"].size() == 16);
    for (const json& h : heads["heads"]) {
      CHECK(h["queries"]["previous_token"] == T - 1);
      CHECK(h["queries"]["duplicate_token"] == 4);  // " a" at 6 and 11, " upon" at 10, " time" at 12
      for (const char* s : kScoreNames) CHECK(h[std::string(s) + "_score"].is_number());
    }
    for (const char* s : kScoreNames) CHECK(heads["ranked"][s].size() == 10);
  }

  SECTION("generate, sliced: decode steps and cut keys are accounted for") {
    auto reader = hooklens_run(fmt::format("generate --model '{}' --prompt 'The cat sat on the mat and the cat' "
                                           "--max-new-tokens 4 --query-range 2: --key-range 1:", model.string()),
                               tmp / "generate");
    const json stats = analyze_offline("attention_stats", reader);
    for (int layer = 0; layer < 4; ++layer) CHECK(head_of(stats, layer, 0)["rows"] == counted_rows(reader, layer));
    const json heads = analyze_offline("head_detectors", reader);
    CHECK(heads["scored_captures"] == 4);  // the prefill of each layer
    CHECK(heads["skipped"]["captures"]["not_step_0"] == 4 * (reader.capture_count() / 4 - 1));
    CHECK(heads["skipped"]["queries_keys_not_captured"]["first_token"].get<int>() > 0);
    CHECK(head_of(heads, 0, 0)["queries"]["first_token"] == 0);
  }
}
