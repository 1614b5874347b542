// Reading Hugging Face tokenizer files into a byte-level BPE tokenizer: tokenizer.json (the
// `tokenizers` library's format, as PreTrainedTokenizerFast ships it) or GPT-2's vocab.json +
// merges.txt, plus tokenizer_config.json (added tokens, chat template, special token texts).
// What is not implemented is refused by name, so a file is never tokenized differently in silence.
#include "byte_level_bpe.h"

#include "hooklens/error.h"
#include "hooklens/message_text.h"
#include "hooklens/json_read.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <limits>
#include <sstream>

namespace hooklens {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// Sequences nested deeper than this are not a tokenizer anyone ships.
constexpr int kMaxNesting = 8;

[[noreturn]] void fail(const fs::path& path, const std::string& message) {
  throw Error(fmt::format("{}: {}", path.string(), message));
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open {}", path.string()));
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  std::string text;
  if (!ec && size > 0) {  // one read of the whole file
    text.resize(size);
    in.read(text.data(), static_cast<std::streamsize>(size));
    text.resize(static_cast<std::size_t>(in.gcount()));
  }
  std::ostringstream rest;  // whatever a growing (or special) file holds beyond its size
  rest << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("cannot read {}", path.string()));
  text += rest.str();
  return text;
}

json read_json(const fs::path& path) { return parse_json_text(read_file(path), path.string()); }

// A value for an error message, without dumping containers (deep ones would recurse deeply).
std::string describe(const json& v) {
  if (v.is_string()) return "'" + brief_text(v.get_ref<const std::string&>()) + "'";
  if (v.is_object()) return "an object";
  if (v.is_array()) return "a list";
  return brief_text(v.dump());
}

std::string json_type(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "(none)";
}

// A boolean field that may be absent (then `fallback`); any other type is an Error.
bool flag(const json& object, const char* key, bool fallback, const fs::path& path, std::string_view where) {
  if (!object.contains(key) || object[key].is_null()) return fallback;
  if (!object[key].is_boolean()) fail(path, fmt::format("{}.{} is not true or false", where, key));
  return object[key].get<bool>();
}

std::int64_t json_id(const json& value, const fs::path& path, std::string_view what) {
  if (!value.is_number_integer()) fail(path, fmt::format("the id of {} is not an integer", what));
  const auto id = value.get<std::int64_t>();
  if (id < 0) fail(path, fmt::format("the id of {} is negative ({})", what, id));
  return id;
}

// merges.txt: one "left right" rule per line in rank order, after an optional "#version" line.
std::vector<std::pair<std::string, std::string>> merges_from_txt(const fs::path& path) {
  const std::string text = read_file(path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::istringstream lines(text);
  std::string line;
  for (std::size_t number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (number == 1 && line.rfind("#version", 0) == 0)) continue;
    std::istringstream fields(line);
    std::string a, b, extra;
    if (!(fields >> a >> b) || (fields >> extra))
      fail(path, fmt::format("line {} is not two symbols separated by a space: '{}'", number, brief_text(line)));
    merges.emplace_back(std::move(a), std::move(b));
  }
  return merges;
}

// Reads a JSON file in one streaming pass: the vocabulary object and the merges list at the given
// paths (nearly all of a 10 MB tokenizer.json) go straight into vectors, never becoming a JSON
// tree; everything else becomes a small DOM in which they are left as an empty object and an
// empty list. A vocabulary or merges list of another type stays in the DOM (has_vocab and
// has_merges say which happened).
class StreamingReader final : public nlohmann::json_sax<json> {
 public:
  StreamingReader(std::vector<std::string> vocab_path, std::optional<std::vector<std::string>> merges_path)
      : vocab_path_(std::move(vocab_path)), merges_path_(std::move(merges_path)) {}

  json read(const fs::path& path) {
    const std::string text = read_file(path);
    check_json_depth(text, path.string());  // the DOM part is nlohmann's, which recurses per level
    if (!json::sax_parse(text, this)) fail(path, error_.empty() ? "malformed JSON" : error_);
    return std::move(root_);
  }

  bool has_vocab = false, has_merges = false;
  std::vector<std::pair<std::string, std::int64_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;

  bool null() override { return value(json()); }
  bool boolean(bool b) override { return value(json(b)); }
  bool number_float(number_float_t x, const string_t&) override { return value(json(x)); }
  bool binary(binary_t&) override { return stop("binary data in JSON"); }
  bool number_integer(number_integer_t i) override {
    if (mode_ == Mode::vocab && i < 0) return stop(fmt::format("the id of '{}' is negative ({})", brief_text(pending_), i));
    return mode_ == Mode::vocab ? (vocab.emplace_back(std::move(pending_), i), true) : value(json(i));
  }
  bool number_unsigned(number_unsigned_t u) override {
    if (mode_ == Mode::vocab && u > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
      return stop(fmt::format("the id of '{}' is too large", brief_text(pending_)));
    return mode_ == Mode::vocab ? (vocab.emplace_back(std::move(pending_), std::int64_t(u)), true) : value(json(u));
  }
  bool string(string_t& s) override {
    if (mode_ == Mode::merges) return merge_string(s);
    return value(json(std::move(s)));
  }
  bool key(string_t& k) override {
    if (mode_ == Mode::vocab)
      pending_ = std::move(k);
    else
      keys_.back() = std::move(k);
    return true;
  }
  bool start_object(std::size_t) override {
    if (mode_ == Mode::dom && at(vocab_path_)) {
      add(json::object());
      mode_ = Mode::vocab;
      has_vocab = true;
      return true;
    }
    if (mode_ != Mode::dom) return value(json());  // a vocabulary id or merge that is an object
    stack_.push_back(add(json::object()));
    keys_.emplace_back();
    return true;
  }
  bool end_object() override {
    if (mode_ == Mode::vocab) {
      mode_ = Mode::dom;
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (mode_ == Mode::dom && merges_path_ && at(*merges_path_)) {
      add(json::array());
      mode_ = Mode::merges;
      has_merges = true;
      return true;
    }
    if (mode_ == Mode::merges && !in_pair_) {
      in_pair_ = true;
      pair_.clear();
      return true;
    }
    if (mode_ != Mode::dom) return value(json());
    stack_.push_back(add(json::array()));
    keys_.emplace_back();
    return true;
  }
  bool end_array() override {
    if (mode_ == Mode::merges) {
      if (!in_pair_) {
        mode_ = Mode::dom;
        return true;
      }
      in_pair_ = false;
      if (pair_.size() != 2) return bad_merge();
      merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    return stop("malformed JSON: " + json_error_text(e));
  }

 private:
  enum class Mode { dom, vocab, merges };

  bool stop(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }
  bool bad_merge() {
    return stop(fmt::format("model.merges[{}] is not two symbols ('a b' or [\"a\", \"b\"])", merges.size()));
  }

  // Whether the container about to start sits at `path` (keys from the root).
  bool at(const std::vector<std::string>& path) const {
    if (stack_.size() != path.size()) return false;
    for (std::size_t i = 0; i < path.size(); ++i)
      if (!stack_[i]->is_object() || keys_[i] != path[i]) return false;
    return true;
  }

  json* add(json v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    json& slot = parent[keys_.back()];
    slot = std::move(v);
    return &slot;
  }

  bool value(json v) {
    if (mode_ == Mode::vocab) return stop(fmt::format("the id of '{}' is not an integer", brief_text(pending_)));
    if (mode_ == Mode::merges) return bad_merge();
    add(std::move(v));
    return true;
  }

  bool merge_string(std::string& s) {
    if (in_pair_) {
      pair_.push_back(std::move(s));
      return pair_.size() <= 2 || bad_merge();
    }
    const auto space = s.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 >= s.size() || s.find(' ', space + 1) != std::string::npos)
      return bad_merge();
    merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    return true;
  }

  std::vector<std::string> vocab_path_;
  std::optional<std::vector<std::string>> merges_path_;
  json root_;
  std::vector<json*> stack_;        // the open containers of the DOM
  std::vector<std::string> keys_;   // per open container: the key of its next member
  Mode mode_ = Mode::dom;
  std::string pending_;             // vocabulary: the symbol whose id comes next
  bool in_pair_ = false;
  std::vector<std::string> pair_;
  std::string error_;
};

// ---------------------------------------------------------------------------------------------
// tokenizer.json's parts

void check_model_options(const json& model, const fs::path& path) {
  if (json_type(model) != "BPE")
    fail(path, fmt::format("unsupported tokenizer model type '{}' (hooklens reads byte-level BPE only)",
                           brief_text(json_type(model))));
  const auto set = [&](const char* key) {
    const json& v = model.contains(key) ? model[key] : json();
    return !(v.is_null() || v == json("") || v == json(false) || v == json(0) || v == json(0.0));
  };
  for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", "byte_fallback"})
    if (set(key))
      fail(path, fmt::format("unsupported BPE option model.{} = {} (hooklens implements byte-level BPE without it)",
                             key, describe(model[key])));
}

void check_normalizer(const json& j, const fs::path& path) {
  const json& n = j.contains("normalizer") ? j["normalizer"] : json();
  if (n.is_null()) return;
  if (json_type(n) == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array() &&
      n["normalizers"].empty())
    return;
  fail(path, fmt::format("unsupported normalizer '{}' (hooklens reads tokenizers without one)", brief_text(json_type(n))));
}

void check_decoder(const json& j, const fs::path& path) {
  const json& d = j.contains("decoder") ? j["decoder"] : json();
  const auto byte_level = [](const json& x) { return x.is_null() || json_type(x) == "ByteLevel"; };
  if (byte_level(d)) return;
  if (json_type(d) == "Sequence" && d.contains("decoders") && d["decoders"].is_array() &&
      std::all_of(d["decoders"].begin(), d["decoders"].end(), byte_level))
    return;
  fail(path, fmt::format("unsupported decoder '{}' (hooklens decodes byte-level BPE)", brief_text(json_type(d))));
}

bpe::SplitBehavior split_behavior(const json& split, const fs::path& path) {
  static const std::pair<const char*, bpe::SplitBehavior> names[] = {
      {"Removed", bpe::SplitBehavior::removed},
      {"Isolated", bpe::SplitBehavior::isolated},
      {"MergedWithPrevious", bpe::SplitBehavior::merged_with_previous},
      {"MergedWithNext", bpe::SplitBehavior::merged_with_next},
      {"Contiguous", bpe::SplitBehavior::contiguous}};
  if (split.contains("behavior") && split["behavior"].is_string())
    for (const auto& [name, behavior] : names)
      if (split["behavior"] == name) return behavior;
  fail(path, fmt::format("Split pre_tokenizer behavior {} is not one of Removed, Isolated, MergedWithPrevious, "
                         "MergedWithNext, Contiguous",
                         split.contains("behavior") ? describe(split["behavior"]) : "(none)"));
}

// The Split pattern as a regex: {"Regex": "..."} as it is, {"String": "..."} matched literally.
std::string split_pattern(const json& split, const fs::path& path) {
  const json& p = split.contains("pattern") ? split["pattern"] : json();
  if (p.is_object() && p.size() == 1) {
    if (p.contains("Regex") && p["Regex"].is_string()) return p["Regex"].get<std::string>();
    if (p.contains("String") && p["String"].is_string()) return text::regex_escape(p["String"].get<std::string>());
  }
  fail(path, "Split pre_tokenizer pattern is not {\"Regex\": \"...\"} or {\"String\": \"...\"}");
}

struct StepKinds {
  std::vector<std::string> names;  // each step's type, in order, to check where ByteLevel is
};

void read_pre_tokenizer(const json& pre, const fs::path& path, int depth, bpe::Config& config, StepKinds& kinds) {
  const std::string type = json_type(pre);
  if (depth > kMaxNesting) fail(path, fmt::format("pre_tokenizer Sequences nested more than {} deep", kMaxNesting));
  if (type == "Sequence") {
    if (!pre.contains("pretokenizers") || !pre["pretokenizers"].is_array())
      fail(path, "pre_tokenizer Sequence has no \"pretokenizers\" list");
    for (const json& part : pre["pretokenizers"]) read_pre_tokenizer(part, path, depth + 1, config, kinds);
    return;
  }
  if (type == "Split") {
    const std::string pattern = split_pattern(pre, path);
    std::shared_ptr<const text::Regex> regex;
    try {
      regex = std::make_shared<const text::Regex>(pattern);
    } catch (const Error& e) {
      fail(path, fmt::format("Split pre_tokenizer: {}", e.what()));
    }
    config.pre_tokenizer.push_back(
        bpe::make_split_step(std::move(regex), split_behavior(pre, path), flag(pre, "invert", false, path, "Split")));
  } else if (type == "Digits") {
    config.pre_tokenizer.push_back(bpe::make_digits_step(flag(pre, "individual_digits", false, path, "Digits")));
  } else if (type == "ByteLevel") {
    config.pre_tokenizer.push_back(bpe::make_byte_level_step(flag(pre, "add_prefix_space", false, path, "ByteLevel"),
                                                             flag(pre, "use_regex", true, path, "ByteLevel")));
  } else {
    fail(path, fmt::format("unsupported pre_tokenizer '{}' (hooklens reads Sequence, Split, Digits and ByteLevel)",
                           brief_text(type)));
  }
  kinds.names.push_back(type);
}

void read_pre_tokenizers(const json& j, const fs::path& path, bpe::Config& config) {
  const json& pre = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json();
  if (pre.is_null()) fail(path, "unsupported pre_tokenizer (none): byte-level BPE needs a ByteLevel pre_tokenizer");
  StepKinds kinds;
  read_pre_tokenizer(pre, path, 0, config, kinds);
  // The byte mapping happens in the model here, so ByteLevel has to be the last step (as in every
  // file that ships); one elsewhere would have later steps see byte-level symbols.
  const auto count = std::count(kinds.names.begin(), kinds.names.end(), "ByteLevel");
  if (count == 0) fail(path, "unsupported pre_tokenizer without ByteLevel (hooklens reads byte-level BPE only)");
  if (count > 1 || kinds.names.back() != "ByteLevel")
    fail(path, "unsupported pre_tokenizer: ByteLevel must be its last step, and only one");
}

// TemplateProcessing's single template: the special tokens before $A go before the text, those
// after it after it.
void read_template(const json& pp, const fs::path& path, std::vector<std::int64_t>& before,
                   std::vector<std::int64_t>& after) {
  if (!pp.contains("single") || !pp["single"].is_array()) fail(path, "TemplateProcessing has no \"single\" list");
  const json& specials = pp.contains("special_tokens") ? pp["special_tokens"] : json::object();
  if (!specials.is_object()) fail(path, "TemplateProcessing special_tokens is not an object");
  bool seen_text = false;
  for (const json& item : pp["single"]) {
    if (item.is_object() && item.contains("Sequence") && item["Sequence"].is_object()) {
      const json& seq = item["Sequence"];
      if (seen_text || !seq.contains("id") || seq["id"] != "A")
        fail(path, "TemplateProcessing single template must hold the text ($A) once, and no $B");
      seen_text = true;
      continue;
    }
    if (!item.is_object() || !item.contains("SpecialToken") || !item["SpecialToken"].is_object() ||
        !item["SpecialToken"].contains("id") || !item["SpecialToken"]["id"].is_string())
      fail(path, "TemplateProcessing single template has an item that is neither Sequence nor SpecialToken");
    const std::string name = item["SpecialToken"]["id"].get<std::string>();
    if (!specials.contains(name) || !specials[name].is_object() || !specials[name].contains("ids") ||
        !specials[name]["ids"].is_array())
      fail(path, fmt::format("TemplateProcessing uses the special token '{}', which its special_tokens do not list "
                             "with ids",
                             brief_text(name)));
    for (const json& id : specials[name]["ids"])
      (seen_text ? after : before).push_back(json_id(id, path, fmt::format("special token '{}'", brief_text(name))));
  }
  if (!seen_text) fail(path, "TemplateProcessing single template must hold the text ($A) once, and no $B");
}

void read_post_processor(const json& pp, const fs::path& path, int depth, bpe::Config& config) {
  if (pp.is_null()) return;
  if (depth > kMaxNesting) fail(path, fmt::format("post_processor Sequences nested more than {} deep", kMaxNesting));
  const std::string type = json_type(pp);
  if (type == "ByteLevel") return;  // trims offsets; adds no ids
  if (type == "Sequence") {
    if (!pp.contains("processors") || !pp["processors"].is_array())
      fail(path, "post_processor Sequence has no \"processors\" list");
    for (const json& part : pp["processors"]) read_post_processor(part, path, depth + 1, config);
    return;
  }
  if (type != "TemplateProcessing")
    fail(path, fmt::format("unsupported post_processor '{}' (hooklens reads ByteLevel, TemplateProcessing and "
                           "Sequence)",
                           brief_text(type)));
  // Each processor of a Sequence wraps what the ones before it made.
  std::vector<std::int64_t> before, after;
  read_template(pp, path, before, after);
  config.prefix_ids.insert(config.prefix_ids.begin(), before.begin(), before.end());
  config.suffix_ids.insert(config.suffix_ids.end(), after.begin(), after.end());
}

bpe::AddedToken added_token(const json& t, std::int64_t id, const fs::path& path, std::string_view where) {
  bpe::AddedToken token;
  token.content = t["content"].get<std::string>();
  token.id = id;
  const std::string what = fmt::format("{} '{}'", where, brief_text(token.content));
  token.lstrip = flag(t, "lstrip", false, path, what);
  token.rstrip = flag(t, "rstrip", false, path, what);
  token.single_word = flag(t, "single_word", false, path, what);
  return token;
}

// An added token joins unless one with the same text is there already (with the same id).
void add_token(bpe::Config& config, bpe::AddedToken token, const fs::path& path) {
  if (token.content.empty()) fail(path, fmt::format("added token {} has empty content", token.id));
  for (const bpe::AddedToken& t : config.added_tokens)
    if (t.content == token.content) {
      if (t.id != token.id)
        fail(path, fmt::format("added token '{}' has id {} but also id {}", brief_text(token.content), token.id, t.id));
      return;
    }
  config.added_tokens.push_back(std::move(token));
}

bpe::Config config_from_tokenizer_json(const fs::path& path) {
  StreamingReader reader({"model", "vocab"}, std::vector<std::string>{"model", "merges"});
  json j = reader.read(path);
  try {
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) fail(path, "no \"model\" object");
    const json& model = j["model"];
    check_model_options(model, path);
    check_normalizer(j, path);
    check_decoder(j, path);
    bpe::Config config;
    read_pre_tokenizers(j, path, config);
    read_post_processor(j.contains("post_processor") ? j["post_processor"] : json(), path, 0, config);
    config.ignore_merges = flag(model, "ignore_merges", false, path, "model");
    if (!reader.has_vocab) fail(path, model.contains("vocab") ? "the vocabulary is not a JSON object" : "no model.vocab");
    if (model.contains("merges") && !reader.has_merges) fail(path, "model.merges is not a list");
    config.vocab = std::move(reader.vocab);
    config.merges = std::move(reader.merges);
    const json& added = j.contains("added_tokens") ? j["added_tokens"] : json::array();
    if (!added.is_array()) fail(path, "added_tokens is not a list");
    for (const json& t : added) {
      if (!t.is_object() || !t.contains("content") || !t["content"].is_string() || !t.contains("id"))
        fail(path, "an added token lacks \"id\" or \"content\"");
      const std::int64_t id = json_id(t["id"], path, fmt::format("'{}'", brief_text(t["content"].get<std::string>())));
      add_token(config, added_token(t, id, path, "added token"), path);
    }
    return config;
  } catch (const json::exception& e) {  // a field of an unexpected type
    fail(path, fmt::format("unexpected content: {}", e.what()));
  }
}

bpe::Config config_from_vocab_merges(const fs::path& dir) {
  bpe::Config config;
  StreamingReader reader({}, std::nullopt);
  reader.read(dir / "vocab.json");
  if (!reader.has_vocab) fail(dir / "vocab.json", "the vocabulary is not a JSON object");
  config.vocab = std::move(reader.vocab);
  config.merges = merges_from_txt(dir / "merges.txt");
  config.pre_tokenizer.push_back(bpe::make_byte_level_step(false, true));
  // GPT2Tokenizer's default eos/bos/unk token, matched literally like any added token.
  for (const auto& [symbol, id] : config.vocab)
    if (symbol == "<|endoftext|>") config.added_tokens.push_back({symbol, id});
  return config;
}

// ---------------------------------------------------------------------------------------------
// tokenizer_config.json

// bos_token and friends: a string, or an AddedToken object {"content": ...}; null when unset.
std::optional<std::string> token_text(const json& v, const fs::path& path, const std::string& key) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  fail(path, fmt::format("{} is not a string or {{\"content\": ...}}", key));
}

void read_chat_template(const json& j, const fs::path& path, ChatConfig& chat) {
  const json& t = j.contains("chat_template") ? j["chat_template"] : json();
  if (t.is_string()) {
    chat.chat_template = t.get<std::string>();
  } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
    std::vector<std::string> names;
    for (const json& entry : t) {
      if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("template") ||
          !entry["template"].is_string())
        fail(path, "chat_template is a list whose entries are not {\"name\": ..., \"template\": ...}");
      names.push_back(brief_text(entry["name"].get<std::string>()));
      if (entry["name"] == "default") chat.chat_template = entry["template"].get<std::string>();
    }
    if (chat.chat_template.empty())
      chat.missing_reason = fmt::format("{} lists chat templates ({}) but none named 'default'", path.string(),
                                        fmt::join(names, ", "));
  } else if (!t.is_null()) {
    fail(path, "chat_template is not a string or a list of named templates");
  }
  // Newer transformers write the template to its own file beside the config.
  const fs::path jinja = path.parent_path() / "chat_template.jinja";
  std::error_code ec;
  if (t.is_null() && fs::is_regular_file(jinja, ec)) chat.chat_template = read_file(jinja);
  if (chat.chat_template.empty() && chat.missing_reason.empty())
    chat.missing_reason = fmt::format("{} has no chat_template (nor is there a chat_template.jinja)", path.string());
}

// Added tokens from "added_tokens_decoder": {"50256": {"content": "<|endoftext|>", ...}}, the chat
// template, and the special token texts the template may use.
void read_tokenizer_config(bpe::Config& config, const fs::path& path) {
  const json j = read_json(path);
  if (!j.is_object()) fail(path, "not a JSON object");
  try {
    if (j.contains("added_tokens_decoder")) {
      const json& decoder = j["added_tokens_decoder"];
      if (!decoder.is_object()) fail(path, "added_tokens_decoder is not an object");
      for (const auto& [key, token] : decoder.items()) {
        std::int64_t id = -1;
        try {
          std::size_t used = 0;
          id = std::stoll(key, &used);
          if (used != key.size()) id = -1;
        } catch (const std::exception&) {
        }
        if (id < 0) fail(path, fmt::format("added_tokens_decoder key '{}' is not a token id", brief_text(key)));
        if (!token.is_object() || !token.contains("content") || !token["content"].is_string())
          fail(path, fmt::format("added_tokens_decoder[{}] has no \"content\" string", id));
        add_token(config, added_token(token, id, path, "added_tokens_decoder"), path);
      }
    }
    read_chat_template(j, path, config.chat);
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"})
      if (j.contains(key))
        if (auto text = token_text(j[key], path, key)) config.chat.special_tokens[key] = std::move(*text);
  } catch (const json::exception& e) {
    fail(path, fmt::format("unexpected content: {}", e.what()));
  }
}

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const fs::path& model_dir) {
  const auto tokenizer_json = model_dir / "tokenizer.json";
  const auto vocab_json = model_dir / "vocab.json";
  const auto merges_txt = model_dir / "merges.txt";
  std::error_code ec;
  const bool use_tokenizer_json = fs::is_regular_file(tokenizer_json, ec);
  if (!use_tokenizer_json && !(fs::is_regular_file(vocab_json, ec) && fs::is_regular_file(merges_txt, ec)))
    throw Error(fmt::format("no tokenizer in {}: looked for tokenizer.json, or vocab.json with merges.txt",
                            model_dir.string()));

  bpe::Config config = use_tokenizer_json ? config_from_tokenizer_json(tokenizer_json) : config_from_vocab_merges(model_dir);
  const auto config_file = model_dir / "tokenizer_config.json";
  if (fs::is_regular_file(config_file, ec))
    read_tokenizer_config(config, config_file);
  else
    config.chat.missing_reason = fmt::format("{} has no tokenizer_config.json (where the chat template would be)",
                                             model_dir.string());
  try {
    return bpe::make_tokenizer(std::move(config));
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", (use_tokenizer_json ? tokenizer_json : vocab_json).string(), e.what()));
  }
}

}  // namespace hooklens
