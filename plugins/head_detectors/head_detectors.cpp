// The head_detectors analyzer: scores every head as a previous-token, duplicate-token, induction
// and first-token head from its attention on full forward passes over the prompts (step 0, the
// conditional pass), using the prompts' token ids. It asks for one extra prompt, a random token
// sequence repeated twice, on which induction and duplicate-token heads show clearly.
// Definitions, options and report fields: docs/analyzers-attention.md.
#include <hooklens/analyzer.h>
#include <hooklens/attention_stats.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>

namespace hooklens {
namespace {

using nlohmann::json;
constexpr const char* kName = "head_detectors";
constexpr std::int64_t kDefaultSeqLen = 32;
constexpr std::int64_t kDefaultSeed = 0;
constexpr std::size_t kRankedCount = 10;

enum Detector { previous_token, duplicate_token, induction, first_token, kDetectors };
constexpr std::array<const char*, kDetectors> kDetectorNames = {"previous_token", "duplicate_token", "induction",
                                                               "first_token"};

// Why a capture is not scored: the keys of the report's skipped.captures.
constexpr std::array<const char*, 5> kSkipReasons = {"not_step_0", "unconditional_pass", "batched",
                                                    "prompt_ids_unknown", "rows_outside_prompt"};

// ---- options ----------------------------------------------------------------------------------

PluginOptions options_of(const json& options) { return PluginOptions(kName, options, {"seq_len", "seed"}); }

// ---- the repeated random sequence -------------------------------------------------------------

// Uniform in [0, n) without modulo bias (std::uniform_int_distribution differs between libraries).
std::uint64_t uniform(std::mt19937_64& rng, std::uint64_t n) {
  const std::uint64_t limit = std::mt19937_64::max() - std::mt19937_64::max() % n;
  std::uint64_t x;
  do x = rng();
  while (x >= limit);
  return x % n;
}

// `count` ids drawn uniformly from the vocabulary without the special ids, all distinct when the
// vocabulary allows it (so each token of the second half has exactly one earlier occurrence).
std::vector<std::int64_t> random_tokens(const ModelInfo& model, std::int64_t count, std::uint64_t seed) {
  std::vector<std::int64_t> specials;
  for (const auto& id : {model.bos_id, model.eos_id, model.mask_id})
    if (id && *id >= 0 && *id < model.vocab_size) specials.push_back(*id);
  std::sort(specials.begin(), specials.end());
  specials.erase(std::unique(specials.begin(), specials.end()), specials.end());
  const std::int64_t eligible = model.vocab_size - std::int64_t(specials.size());
  if (eligible < 1) throw Error(fmt::format("{}: the vocabulary of {} has no ordinary token to draw", kName, model.path));
  // The i-th eligible id: skip the specials at or below it.
  const auto nth = [&](std::int64_t i) {
    for (std::int64_t s : specials)
      if (s <= i) ++i;
    return i;
  };
  std::mt19937_64 rng(seed);
  std::vector<std::int64_t> ids;
  std::set<std::int64_t> used;
  const bool distinct = eligible >= count;
  while (std::int64_t(ids.size()) < count) {
    const std::int64_t id = nth(std::int64_t(uniform(rng, std::uint64_t(eligible))));
    if (distinct && !used.insert(id).second) continue;
    ids.push_back(id);
  }
  return ids;
}

// ---- scoring ----------------------------------------------------------------------------------

struct Score {
  double sum = 0;
  std::int64_t queries = 0;
  json mean() const { return queries > 0 ? json(sum / double(queries)) : json(); }
};

struct HeadScores {
  std::array<Score, kDetectors> scores;
  AttentionSummary summary;
};

// The absolute key positions each detector reads for query q, or empty when q does not count for it.
struct QueryKeys {
  std::array<std::vector<std::int64_t>, kDetectors> keys;
};

// Earlier positions of each token, filled query by query.
class Occurrences {
 public:
  explicit Occurrences(const std::vector<std::int64_t>& ids) : ids_(ids) {}

  // Keys for query q; call with q = 0, 1, 2, ... in order.
  QueryKeys next(std::int64_t q) {
    QueryKeys k;
    auto& earlier = seen_[ids_[std::size_t(q)]];
    if (q >= 1) {
      k.keys[previous_token] = {q - 1};
      k.keys[first_token] = {0};
    }
    k.keys[duplicate_token] = earlier;
    for (std::int64_t j : earlier)
      if (j < q - 1) k.keys[induction].push_back(j + 1);
    earlier.push_back(q);
    return k;
  }

 private:
  const std::vector<std::int64_t>& ids_;
  std::unordered_map<std::int64_t, std::vector<std::int64_t>> seen_;
};

json definitions() {
  return {
      {"A[q, k]", "the attention weight of query position q on key position k (absolute positions) in a full forward "
                  "pass (step 0, conditional pass) over a prompt whose token ids tok are known"},
      {"previous_token_score", "mean over queries q >= 1 of A[q, q-1]"},
      {"duplicate_token_score", "mean over queries q whose token occurred before (some j < q with tok[j] == tok[q]) "
                                "of the sum over such j of A[q, j]"},
      {"induction_score", "mean over queries q with an earlier occurrence j < q-1 of tok[q] of the sum over such j of "
                          "A[q, j+1] (the token after the earlier occurrence)"},
      {"first_token_score", "mean over queries q >= 1 of A[q, 0]"},
      {"pooling", "each score pools every scored query of every prompt (prompts weighted by their scored queries)"},
      {"queries", "per score, the number of queries pooled; a query counts only if its row and every key the score "
                  "reads were captured"},
      {"entropy", "mean over the scored passes' rows of -sum w log w in nats (summarize_heads, attention_stats.h)"},
      {"ranked", "per score, the heads with the highest score, best first (at most 10)"}};
}

class HeadDetectors final : public Analyzer {
 public:
  std::vector<std::string> hooks() const override { return {hooklens::hook_names::every_layer(hooklens::hook_names::pattern)}; }

  std::vector<ExtraPrompt> extra_prompts(const ModelInfo& model, const json& options) const override {
    const PluginOptions given = options_of(options);
    const std::optional<std::int64_t> asked = given.optional_integer("seq_len", 2);
    const std::int64_t seed = given.integer("seed", kDefaultSeed, 0);
    const std::int64_t prefix = model.bos_id ? 1 : 0;
    const std::int64_t longest = model.n_ctx > 0 ? (model.n_ctx - prefix) / 2 : kDefaultSeqLen;
    if (asked && *asked > longest)
      throw UsageError(fmt::format("{}: seq_len {} needs {} positions, the model {} has {}", kName, *asked,
                                   2 * *asked + prefix, model.path, model.n_ctx));
    const std::int64_t n = asked.value_or(std::min(kDefaultSeqLen, longest));
    if (n < 2) return {};  // the model's context is too short for a repeated sequence
    const std::vector<std::int64_t> half = random_tokens(model, n, std::uint64_t(seed));
    ExtraPrompt prompt;
    if (model.bos_id) prompt.ids.push_back(*model.bos_id);
    prompt.ids.insert(prompt.ids.end(), half.begin(), half.end());
    prompt.ids.insert(prompt.ids.end(), half.begin(), half.end());
    prompt.source = fmt::format("{}: repeated random tokens (seed {}, 2 x {})", kName, seed, n);
    return {prompt};
  }

  void begin(const json& run) override {
    const PluginOptions given = options_of(run.value("options", json::object()));
    given.optional_integer("seq_len", 2);  // only checked here: they shape extra_prompts()
    given.optional_integer("seed", 0);
    run_ = PatternRun::of(run, kName);
    prompts_.clear();
    for (const json& prompt : run.value("prompts", json::array()))
      prompts_.push_back(prompt.value("ids", std::vector<std::int64_t>{}));
    heads_.clear();
    skipped_captures_ = json::object();
    keys_not_captured_.fill(0);
    outside_prompt_ = 0;
    scored_captures_ = 0;
  }

  void observe(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor) override {
    if (!run_) throw Error(fmt::format("{}: observe() before begin()", kName));
    const at::Tensor pattern = run_->check(hook, ctx, tensor, kName);
    if (const char* reason = skip_reason(ctx, pattern)) {
      skipped_captures_[reason] = skipped_captures_.value(reason, 0) + 1;
      return;
    }
    const std::vector<int> heads = run_->heads_of(pattern.size(1), kName);
    const std::vector<AttentionSummary> summaries = summarize_heads(pattern, PatternRows::of(pattern, ctx, run_->model));
    for (std::size_t h = 0; h < heads.size(); ++h) heads_[{ctx.layer, heads[h]}].summary.add(summaries[h]);
    score(ctx, pattern.to(at::kFloat).contiguous(), heads);
    ++scored_captures_;
  }

  // Scores, summaries and skip counts are sums and counts: another rank's add to ours. The ranking
  // is made in finish() from the merged sums, with the same (layer, head) order for ties.
  bool merges_state() const override { return true; }

  json save_state() const override {
    json heads = json::array();
    for (const auto& [where, head] : heads_) {
      json scores = json::array();
      for (const Score& s : head.scores) scores.push_back({s.sum, s.queries});
      heads.push_back({{"layer", where.first}, {"head", where.second}, {"scores", std::move(scores)},
                       {"summary", head.summary.to_state()}});
    }
    return {{"heads", std::move(heads)},
            {"skipped_captures", skipped_captures_},
            {"keys_not_captured", keys_not_captured_},
            {"outside_prompt", outside_prompt_},
            {"scored_captures", scored_captures_}};
  }

  void merge_state(const json& state) override {
    if (!run_) throw Error(fmt::format("{}: merge_state() before begin()", kName));
    std::map<std::pair<int, int>, HeadScores> heads;
    std::map<std::string, std::int64_t> skipped;
    std::array<std::int64_t, kDetectors> not_captured{};
    std::int64_t outside = 0, scored = 0;
    read_state(kName, [&] {
      for (const json& entry : state_array(state.at("heads"), "heads")) {
        HeadScores& head = heads[{state_index(entry.at("layer"), run_->model.n_layers, "layer"),
                                  state_index(entry.at("head"), run_->model.n_heads, "head")}];
        const json& scores = entry.at("scores");
        if (!scores.is_array() || scores.size() != kDetectors)
          throw Error(fmt::format("scores should be {} [sum, queries] pairs", int(kDetectors)));
        for (int d = 0; d < kDetectors; ++d) {
          head.scores[d].sum += state_number(scores[d].at(0), "a score's sum");
          head.scores[d].queries += state_count(scores[d].at(1), "a score's queries");
        }
        head.summary.add(AttentionSummary::from_state(entry.at("summary")));
      }
      const json& reasons = state.at("skipped_captures");
      if (!reasons.is_object()) throw Error("skipped_captures should be an object");
      for (const auto& [reason, count] : reasons.items()) {
        if (std::find(std::begin(kSkipReasons), std::end(kSkipReasons), reason) == std::end(kSkipReasons))
          throw Error(fmt::format("'{}' is not a reason to skip a capture", reason));
        skipped[reason] += state_count(count, "skipped captures");
      }
      const json& keys = state.at("keys_not_captured");
      if (!keys.is_array() || keys.size() != kDetectors)
        throw Error(fmt::format("keys_not_captured should hold {} counts", int(kDetectors)));
      for (int d = 0; d < kDetectors; ++d) not_captured[d] = state_count(keys[d], "keys_not_captured");
      outside = state_count(state.at("outside_prompt"), "outside_prompt");
      scored = state_count(state.at("scored_captures"), "scored_captures");
    });
    for (const auto& [where, theirs] : heads) {
      HeadScores& mine = heads_[where];
      for (int d = 0; d < kDetectors; ++d) {
        mine.scores[d].sum += theirs.scores[d].sum;
        mine.scores[d].queries += theirs.scores[d].queries;
      }
      mine.summary.add(theirs.summary);
    }
    for (const auto& [reason, count] : skipped)
      skipped_captures_[reason] = skipped_captures_.value(reason, std::int64_t(0)) + count;
    for (int d = 0; d < kDetectors; ++d) keys_not_captured_[d] += not_captured[d];
    outside_prompt_ += outside;
    scored_captures_ += scored;
  }

  json finish(const json& manifest) override {
    (void)manifest;
    json report = {{"analyzer", kName},
                   {"definitions", definitions()},
                   {"scored_captures", scored_captures_},
                   {"skipped",
                    {{"captures", skipped_captures_},
                     {"queries_outside_prompt", outside_prompt_},
                     {"queries_keys_not_captured", json::object()}}},
                   {"heads", json::array()},
                   {"ranked", json::object()}};
    for (int d = 0; d < kDetectors; ++d) report["skipped"]["queries_keys_not_captured"][kDetectorNames[d]] = keys_not_captured_[d];
    for (const auto& [where, head] : heads_) {
      json entry = {{"layer", where.first}, {"head", where.second}, {"queries", json::object()}};
      for (int d = 0; d < kDetectors; ++d) {
        entry[fmt::format("{}_score", kDetectorNames[d])] = head.scores[d].mean();
        entry["queries"][kDetectorNames[d]] = head.scores[d].queries;
      }
      const json summary = head.summary.to_json();
      entry["entropy"] = summary["entropy"];
      entry["normalized_entropy"] = summary["normalized_entropy"];
      report["heads"].push_back(std::move(entry));
    }
    for (int d = 0; d < kDetectors; ++d) report["ranked"][kDetectorNames[d]] = ranked(Detector(d));
    report["headline"] = headline(report["ranked"]);
    null_non_finite(report);
    return report;
  }

 private:
  // Why a capture cannot be scored (one of kSkipReasons), or null.
  const char* skip_reason(const CaptureContext& ctx, const at::Tensor& pattern) const {
    if (ctx.step != 0) return kSkipReasons[0];
    if (ctx.pass != 0) return kSkipReasons[1];
    if (pattern.size(0) != 1) return kSkipReasons[2];
    if (ctx.prompt < 0 || std::size_t(ctx.prompt) >= prompts_.size() || prompts_[std::size_t(ctx.prompt)].empty())
      return kSkipReasons[3];
    if (ctx.query_offset >= std::int64_t(prompts_[std::size_t(ctx.prompt)].size())) return kSkipReasons[4];
    return nullptr;
  }

  // Adds the capture's scores: rows are positions query_offset.., columns key_offset...
  void score(const CaptureContext& ctx, const at::Tensor& pattern, const std::vector<int>& heads) {
    const std::vector<std::int64_t>& ids = prompts_[std::size_t(ctx.prompt)];
    const std::int64_t Q = pattern.size(2), K = pattern.size(3);
    const std::int64_t last = std::min<std::int64_t>(std::int64_t(ids.size()), ctx.query_offset + Q);
    const float* data = pattern.data_ptr<float>();
    outside_prompt_ += ctx.query_offset + Q - last;
    Occurrences occurrences(ids);
    for (std::int64_t q = 0; q < last; ++q) {
      const QueryKeys keys = occurrences.next(q);
      if (q < ctx.query_offset) continue;
      const std::int64_t row = q - ctx.query_offset;
      for (int d = 0; d < kDetectors; ++d) {
        const auto& needed = keys.keys[d];
        if (needed.empty()) continue;
        const bool captured = std::all_of(needed.begin(), needed.end(), [&](std::int64_t k) {
          return k >= ctx.key_offset && k < ctx.key_offset + K;
        });
        if (!captured) {
          ++keys_not_captured_[d];
          continue;
        }
        for (std::size_t h = 0; h < heads.size(); ++h) {
          const float* w = data + (std::int64_t(h) * Q + row) * K;
          double sum = 0;
          for (std::int64_t k : needed) sum += w[k - ctx.key_offset];
          Score& s = heads_[{ctx.layer, heads[h]}].scores[d];
          s.sum += sum;
          ++s.queries;
        }
      }
    }
  }

  json ranked(Detector d) const {
    std::vector<std::pair<double, std::pair<int, int>>> order;
    for (const auto& [where, head] : heads_)
      if (head.scores[d].queries > 0 && std::isfinite(head.scores[d].sum))
        order.push_back({head.scores[d].sum / double(head.scores[d].queries), where});
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    json list = json::array();
    for (std::size_t i = 0; i < std::min(order.size(), kRankedCount); ++i)
      list.push_back({{"layer", order[i].second.first}, {"head", order[i].second.second}, {"score", order[i].first}});
    return list;
  }

  // The best head of each kind, one line each: "induction: layer 2 head 1 (score 0.83)".
  static json headline(const json& ranked) {
    json lines = json::array();
    for (const char* name : kDetectorNames) {
      const json& list = ranked[name];
      if (list.empty()) continue;
      const json& best = list[0];
      lines.push_back(fmt::format("{}: layer {} head {} (score {:.3f})", name, best["layer"].get<int>(),
                                  best["head"].get<int>(), best["score"].get<double>()));
    }
    return lines;
  }

  std::optional<PatternRun> run_;
  std::vector<std::vector<std::int64_t>> prompts_;
  std::map<std::pair<int, int>, HeadScores> heads_;  // by (layer, head)
  json skipped_captures_ = json::object();          // reason -> captures
  std::array<std::int64_t, kDetectors> keys_not_captured_{};
  std::int64_t outside_prompt_ = 0;  // rows of scored captures past the prompt (e.g. diffusion's masks)
  std::int64_t scored_captures_ = 0;
};

}  // namespace
}  // namespace hooklens

HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, hooklens::HeadDetectors, "analyzer", "head_detectors", "1.0",
                       "previous-token, duplicate-token, induction and first-token scores per attention head")
