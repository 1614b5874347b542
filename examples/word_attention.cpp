// word_attention: what the word-level attention script showed: while a model generates text, which
// words of the prompt does each generated word attend to?
//
//   word_attention [--model DIR] [--prompt TEXT] [--max-new-tokens N] [--out DIR]
//
// Generates N tokens greedily (hooklens::generate_autoregressive) and captures every layer's
// blocks.*.attn.hook_pattern at the decode steps. A generated token's attention is its own query row:
// the row of the decode step that consumes it (the token generated at step s is consumed at step
// s + 1), so the program generates N + 1 tokens and reports the first N.
//
// Words: tokens are grouped left to right; a token starts a new word when it is the first token,
// when its token_string begins with whitespace (space, tab, newline) or with 'Ġ' (GPT-2's space
// symbol), or when its first character is ASCII punctuation; otherwise it joins the word before it.
// Prompt and generated tokens are grouped separately (the first generated token starts a word).
//
// For generated word g and prompt word w, in layer l:
//   attention[l](g, w) = mean over g's tokens t of ( mean over heads of ( sum over w's tokens k of A[t, k] ) )
// and attention(g, w) = mean over layers of attention[l](g, w). OUT then holds:
//   word_attention.csv   one row per generated word, prompt word and layer ("mean" or a layer number)
//   word_attention.json  the words (with their token positions), attention per generated word (layer
//                        mean) and per layer, and the definitions
//   word_attention.png   generated words (rows) x prompt words (columns): the layer mean, then each layer
// The default model is models/toy-neo (trained by `hooklens train`, in the repository).
// Exit status: 0 success, 1 error, 2 usage error.

#include "example_main.h"

#include <hooklens/drawing.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/generate.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/text.h>

#include <ATen/core/Tensor.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace drawing = hooklens::drawing;
using hooklens::Error;
using hooklens::UsageError;
using nlohmann::json;

struct Options {
  fs::path model = "models/toy-neo", out = "runs/word_attention";
  std::string prompt = "The quick brown fox jumps over the lazy dog because";
  int max_new_tokens = 8;
};

struct Word {
  std::string text;                      // its tokens' strings joined, leading whitespace removed
  std::vector<std::int64_t> positions;  // absolute token positions
};

bool starts_word(const std::string& token) {
  if (token.empty()) return false;
  const unsigned char c = static_cast<unsigned char>(token[0]);
  return std::isspace(c) || token.rfind("\xC4\xA0", 0) == 0 || (c < 128 && std::ispunct(c));
}

// Groups tokens[i] (at position first + i) into words by the rule in the header comment.
std::vector<Word> group_words(const std::vector<std::string>& tokens, std::int64_t first) {
  std::vector<Word> words;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (words.empty() || starts_word(tokens[i])) words.push_back({});
    words.back().text += tokens[i];
    words.back().positions.push_back(first + std::int64_t(i));
  }
  for (Word& w : words) {
    std::size_t start = 0;
    while (start < w.text.size() && std::isspace(static_cast<unsigned char>(w.text[start]))) ++start;
    w.text = w.text.substr(start);
  }
  return words;
}

// rows[layer][position - P]: the head-mean attention of a generated position to each prompt position.
using PromptRows = std::map<int, std::map<std::int64_t, std::vector<double>>>;

// Records, at decode step s, the row of the position consumed (P + s - 1), restricted to prompt keys.
hooklens::HookSet record_rows(PromptRows& rows, std::int64_t prompt_length) {
  hooklens::HookFilter filter;
  filter.names = {hooklens::hook_names::every_layer(hooklens::hook_names::pattern)};
  filter.phases = {hooklens::Phase::decode};
  hooklens::HookSet hooks;
  hooks.add(filter, [&rows, prompt_length](std::string_view name, const hooklens::CaptureContext& ctx, at::Tensor& t) {
    const at::Tensor p = t.to(at::kDouble).contiguous();  // [1, heads, queries, keys]
    const std::int64_t position = prompt_length + ctx.step - 1, r = position - ctx.query_offset;
    if (p.dim() != 4 || r < 0 || r >= p.size(2) || ctx.key_offset != 0 || p.size(3) < prompt_length)
      throw Error(fmt::format("{} at step {}: the pattern does not hold position {}'s row over the prompt's keys", name,
                              ctx.step, position));
    const std::int64_t heads = p.size(1), queries = p.size(2), keys = p.size(3);
    std::vector<double> mean(std::size_t(prompt_length), 0.0);
    const double* w = p.data_ptr<double>();
    for (std::int64_t h = 0; h < heads; ++h)
      for (std::int64_t k = 0; k < prompt_length; ++k) mean[std::size_t(k)] += w[(h * queries + r) * keys + k] / double(heads);
    rows[ctx.layer][position] = std::move(mean);
  });
  return hooks;
}

// attention[g][w] for one layer's rows.
std::vector<std::vector<double>> word_scores(const std::map<std::int64_t, std::vector<double>>& rows,
                                             const std::vector<Word>& generated, const std::vector<Word>& prompt) {
  std::vector<std::vector<double>> scores;
  for (const Word& g : generated) {
    std::vector<double> per_word(prompt.size(), 0.0);
    for (std::int64_t t : g.positions) {
      const auto& row = rows.at(t);
      for (std::size_t w = 0; w < prompt.size(); ++w)
        for (std::int64_t k : prompt[w].positions) per_word[w] += row[std::size_t(k)] / double(g.positions.size());
    }
    scores.push_back(std::move(per_word));
  }
  return scores;
}

std::vector<std::string> token_strings(const hooklens::Tokenizer& tok, const std::vector<std::int64_t>& ids) {
  std::vector<std::string> out;
  for (auto id : ids) out.push_back(tok.token_string(id));
  return out;
}

std::string csv_field(const std::string& s) {
  std::string quoted = "\"";
  for (char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

drawing::Panel panel(const std::string& title, const std::vector<std::vector<double>>& scores,
                     const std::vector<Word>& generated, const std::vector<Word>& prompt) {
  drawing::Matrix m{std::int64_t(generated.size()), std::int64_t(prompt.size()), {}};
  for (const auto& row : scores) m.values.insert(m.values.end(), row.begin(), row.end());
  std::vector<std::string> rows, cols;
  for (const Word& g : generated) rows.push_back(drawing::token_label(g.text));
  for (const Word& w : prompt) cols.push_back(drawing::token_label(w.text));
  const drawing::Scale scale = drawing::sequential_scale({&m});
  return {title, "rows: generated words, columns: prompt words", m, scale, drawing::kLabelledCell,
          drawing::kLabelledCell, rows, cols};
}

void run(const Options& o) {
  if (!fs::exists(o.model))
    throw UsageError(fmt::format("--model {}: no such model (the default, models/toy-neo, is in the repository: run from its root)",
                                 o.model.string()));
  auto model = hooklens::open_model(hooklens::PluginRegistry(), o.model);
  const hooklens::Tokenizer* tok = model->tokenizer();
  if (!tok) throw UsageError(fmt::format("--model {}: the model has no tokenizer", o.model.string()));
  const std::vector<std::int64_t> prompt = tok->encode(o.prompt);
  const std::int64_t P = std::int64_t(prompt.size());
  if (P == 0) throw UsageError("--prompt: the prompt has no tokens");
  if (P + o.max_new_tokens + 1 > model->info().n_ctx)
    throw UsageError(fmt::format("--prompt of {} tokens + --max-new-tokens {} (+1) exceeds {}'s context of {} tokens",
                                 P, o.max_new_tokens, o.model.string(), model->info().n_ctx));

  PromptRows rows;
  hooklens::SamplingOptions sampling;
  sampling.max_new_tokens = o.max_new_tokens + 1;  // the extra token is never reported (see the header)
  sampling.stop_at_eos = false;
  const auto result = hooklens::generate_autoregressive(*model, prompt, sampling, record_rows(rows, P));
  const std::vector<std::int64_t> generated_ids(result.new_ids.begin(), result.new_ids.begin() + o.max_new_tokens);

  const std::vector<Word> prompt_words = group_words(token_strings(*tok, prompt), 0);
  const std::vector<Word> generated = group_words(token_strings(*tok, generated_ids), P);
  std::vector<std::vector<std::vector<double>>> per_layer;  // [layer][g][w]
  std::vector<int> layers;
  for (const auto& [layer, layer_rows] : rows) {
    layers.push_back(layer);
    per_layer.push_back(word_scores(layer_rows, generated, prompt_words));
  }
  if (layers.empty()) throw Error(fmt::format("{}: the model fired no attention patterns", o.model.string()));
  std::vector<std::vector<double>> mean(generated.size(), std::vector<double>(prompt_words.size(), 0.0));
  for (const auto& scores : per_layer)
    for (std::size_t g = 0; g < generated.size(); ++g)
      for (std::size_t w = 0; w < prompt_words.size(); ++w) mean[g][w] += scores[g][w] / double(layers.size());

  fs::create_directories(o.out);
  std::string csv = "generated_word_index,generated_word,prompt_word_index,prompt_word,layer,attention\n";
  json words = json::array(), prompt_json = json::array();
  for (std::size_t w = 0; w < prompt_words.size(); ++w)
    prompt_json.push_back({{"index", w}, {"word", prompt_words[w].text}, {"positions", prompt_words[w].positions}});
  for (std::size_t g = 0; g < generated.size(); ++g) {
    json by_layer = json::array();
    for (std::size_t l = 0; l < layers.size(); ++l) by_layer.push_back(per_layer[l][g]);
    words.push_back({{"index", g}, {"word", generated[g].text}, {"positions", generated[g].positions},
                     {"attention", mean[g]}, {"per_layer", by_layer}});
    for (std::size_t w = 0; w < prompt_words.size(); ++w) {
      const std::string head = fmt::format("{},{},{},{}", g, csv_field(generated[g].text), w, csv_field(prompt_words[w].text));
      csv += fmt::format("{},mean,{:.9g}\n", head, mean[g][w]);
      for (std::size_t l = 0; l < layers.size(); ++l) csv += fmt::format("{},{},{:.9g}\n", head, layers[l], per_layer[l][g][w]);
    }
  }
  hooklens::write_text_file(o.out / "word_attention.csv", csv);
  hooklens::write_text_file(
      o.out / "word_attention.json",
      drawing::dump({{"model", o.model.string()},
                     {"prompt", o.prompt},
                     {"prompt_tokens", token_strings(*tok, prompt)},
                     {"generated_tokens", token_strings(*tok, generated_ids)},
                     {"generated_text", tok->decode(generated_ids)},
                     {"layers", layers},
                     {"prompt_words", prompt_json},
                     {"generated_words", words},
                     {"definitions",
                      {{"word", "a token starts a new word if it is first, begins with whitespace or 'Ġ', or begins with "
                                "ASCII punctuation; prompt and generated tokens are grouped separately"},
                       {"row", "a generated token's attention row is its query row at the decode step that consumes it"},
                       {"per_layer", "per_layer[l][w] = mean over the generated word's tokens of the head-mean attention "
                                     "summed over prompt word w's tokens, in layers[l]"},
                       {"attention", "attention[w] = mean over layers of per_layer[l][w]"}}}}));
  std::vector<drawing::Panel> panels{panel("mean of layers", mean, generated, prompt_words)};
  for (std::size_t l = 0; l < layers.size(); ++l)
    panels.push_back(panel(fmt::format("layer {}", layers[l]), per_layer[l], generated, prompt_words));
  drawing::write_figure(o.out / "word_attention.png", panels, 2);
  std::cout << fmt::format("generated: {}\nwrote word_attention.csv, .json, .png to {}\n", tok->decode(generated_ids),
                           o.out.string());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Generate text greedily and show which prompt words each generated word attends to (summed over "
               "the prompt word's tokens, averaged over the generated word's tokens, the heads and the layers). "
               "Writes word_attention.csv/.json/.png."};
  app.name("word_attention");
  std::string model = o.model.string(), out = o.out.string();
  app.add_option("--model", model, "model directory or file")->capture_default_str();
  app.add_option("--prompt", o.prompt, "prompt text")->capture_default_str();
  app.add_option("--max-new-tokens", o.max_new_tokens, "tokens to generate and report")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--out", out, "output directory")->capture_default_str();
  app.footer("Exit status: 0 success, 1 error, 2 usage error.");
  return run_example(app, argc, argv, [&] {
    o.model = model;
    o.out = out;
    ::run(o);
  });
}
