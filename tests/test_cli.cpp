// The `hooklens` command line as a user meets it: the real binary run as a subprocess, checked for
// its exit code (0 success, 1 error, 2 usage error), its stderr (exactly one "hooklens: error:"
// line naming the culprit), what it leaves on disk (never a run that looks complete after a
// failure), and on success the run directory against the tiny-neo-a reference outputs.
//
// Every invocation gets its own working directory, runs under a deadline (a hang fails the test),
// and independent invocations run two at a time: each one pays ~0.8 s for loading libtorch.
#include "resource_bounds.h"
#include "test_util.h"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <hooklens/run.h>
#include <hooklens/tokenizer.h>
#include <hooklens/weights.h>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::TempDir;

const fs::path kCli = HOOKLENS_BUILD_DIR "/bin/hooklens";
constexpr auto kDeadline = std::chrono::seconds(60 * test::kSlowdown);

fs::path neo_fixture() { return test::fixtures() / "tiny-neo-a"; }

// Replaces whatever is at `file` (a symlink into the fixtures is removed, never written through).
void write_text(const fs::path& file, const std::string& text) {
  fs::remove(file);
  std::ofstream out(file, std::ios::binary);
  out << text;
  REQUIRE(out.flush());
}

json fixture_prompts() { return json::parse(test::read_file(neo_fixture() / "prompts.json"))["prompts"]; }

// ---- running the CLI ------------------------------------------------------------------------------

struct Invocation {
  std::string name;  // shown when a check fails
  std::vector<std::string> args;
  fs::path cwd;      // created if missing; stdout and stderr are kept beside it
  std::vector<std::string> env;  // "NAME=value" entries added to (or replacing) the environment
};

struct Outcome {
  std::string name, command;
  int code = -1;          // exit status; 128 + signal if killed by one
  bool timed_out = false;
  std::string out, err;
  std::string describe() const {
    return fmt::format("case '{}': {}\nexit {}{}\n--- stdout ---\n{}--- stderr ---\n{}", name, command, code,
                       timed_out ? " (timed out)" : "", out, err);
  }
};

struct Running {
  pid_t pid;
  std::chrono::steady_clock::time_point deadline;
  bool timed_out = false;
};

fs::path out_file(const Invocation& inv) { return fs::path(inv.cwd) += ".stdout"; }
fs::path err_file(const Invocation& inv) { return fs::path(inv.cwd) += ".stderr"; }

// Everything the child needs is built before fork(): between fork and exec only async-signal-safe
// calls are allowed (the test process has libtorch's threads).
Running start(const Invocation& inv) {
  fs::create_directories(inv.cwd);
  std::vector<std::string> args{kCli.string()};
  args.insert(args.end(), inv.args.begin(), inv.args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const auto replaced = [&](const std::string& mine) {
      return entry.compare(0, mine.find('=') + 1, mine, 0, mine.find('=') + 1) == 0;
    };
    if (std::none_of(inv.env.begin(), inv.env.end(), replaced)) env.push_back(entry);
  }
  env.insert(env.end(), inv.env.begin(), inv.env.end());
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string cwd = inv.cwd.string(), out = out_file(inv).string(), err = err_file(inv).string();

  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int null = open("/dev/null", O_RDONLY);
    if (o < 0 || e < 0 || null < 0 || chdir(cwd.c_str()) != 0 || dup2(null, 0) < 0 || dup2(o, 1) < 0 ||
        dup2(e, 2) < 0)
      _exit(125);
    execve(argv[0], argv.data(), envp.data());
    _exit(126);
  }
  return {pid, std::chrono::steady_clock::now() + kDeadline};
}

// Runs the invocations, `jobs` at a time; a process past its deadline is killed.
std::vector<Outcome> run_all(const std::vector<Invocation>& invocations, std::size_t jobs = 2) {
  std::vector<Outcome> outcomes(invocations.size());
  std::vector<std::pair<std::size_t, Running>> running;
  std::size_t next = 0;
  while (next < invocations.size() || !running.empty()) {
    while (next < invocations.size() && running.size() < jobs) {
      running.emplace_back(next, start(invocations[next]));
      ++next;
    }
    for (auto it = running.begin(); it != running.end();) {
      auto& [index, r] = *it;
      int status = 0;
      const pid_t done = waitpid(r.pid, &status, WNOHANG);
      if (done == 0) {
        if (std::chrono::steady_clock::now() > r.deadline && !r.timed_out) {
          kill(r.pid, SIGKILL);
          r.timed_out = true;
        }
        ++it;
        continue;
      }
      const Invocation& inv = invocations[index];
      Outcome& o = outcomes[index];
      o.name = inv.name;
      o.command = "hooklens";
      for (const auto& a : inv.args) o.command += " '" + a + "'";
      o.timed_out = r.timed_out;
      o.code = done < 0 ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      o.out = test::read_file(out_file(inv));
      o.err = test::read_file(err_file(inv));
      it = running.erase(it);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return outcomes;
}

Outcome run_one(const Invocation& inv) { return run_all({inv}).front(); }

void require_hooklens_run(const std::vector<std::string>& args, const fs::path& cwd) {
  const Outcome o = run_one({"setup", args, cwd});
  INFO(o.describe());
  REQUIRE(o.code == 0);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A manifest.json saying "complete": true anywhere below `root`.
bool has_complete_run(const fs::path& root) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() != "manifest.json") continue;
    const json m = json::parse(test::read_file(it->path()), nullptr, false);
    if (m.is_object() && m.value("complete", false) == true) return true;
  }
  return false;
}

void check_success(const Outcome& r) {
  INFO(r.describe());
  CHECK(r.code == 0);
  CHECK(r.err.find("hooklens: error") == std::string::npos);
}

// Exit `code`, stderr exactly one error line naming every culprit (plus, for usage errors, at most
// the one "Run 'hooklens --help'" hint line), and nothing below `workdir` that looks like a run.
void check_error(const Outcome& r, int code, const std::vector<std::string>& culprits, const fs::path& workdir) {
  INFO(r.describe());
  CHECK(!r.timed_out);
  CHECK(r.code == code);
  const auto lines = lines_of(r.err);
  if (lines.empty()) {
    FAIL_CHECK("no error line on stderr");
    return;
  }
  CHECK(lines[0].rfind("hooklens: error: ", 0) == 0);
  const bool hint = lines.size() == 2 && lines[1].rfind("Run 'hooklens --help'", 0) == 0;
  CHECK((lines.size() == 1 || (code == 2 && hint)));
  for (const auto& culprit : culprits) CHECK_THAT(lines[0], Catch::Contains(culprit));
  CHECK_FALSE(has_complete_run(workdir));
}

// ---- model directories -------------------------------------------------------------------------

// A model directory whose files are symlinks to tiny-neo-a (safetensors weights only).
fs::path link_neo(const fs::path& dir) {
  fs::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors", "vocab.json", "merges.txt"})
    fs::create_symlink(neo_fixture() / file, dir / file);
  return dir;
}

fs::path neo_with_config(const fs::path& dir, const std::function<void(json&)>& edit) {
  link_neo(dir);
  json config = json::parse(test::read_file(neo_fixture() / "config.json"));
  edit(config);
  write_text(dir / "config.json", config.dump(2));
  return dir;
}

// Rewrites model.safetensors with the header edited; the data section is kept byte for byte.
fs::path neo_with_header(const fs::path& dir, const std::function<void(json&)>& edit) {
  link_neo(dir);
  const std::string file = test::read_file(neo_fixture() / "model.safetensors");
  std::uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);
  json header = json::parse(file.substr(8, n));
  edit(header);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::uint64_t size = text.size();
  write_text(dir / "model.safetensors",
             std::string(reinterpret_cast<const char*>(&size), 8) + text + file.substr(8 + n));
  return dir;
}

fs::path neo_with_weights(const fs::path& dir, const std::function<void(hooklens::TensorMap&)>& edit) {
  link_neo(dir);
  hooklens::TensorMap tensors = hooklens::read_safetensors(neo_fixture() / "model.safetensors");
  edit(tensors);
  fs::remove(dir / "model.safetensors");
  hooklens::write_safetensors(dir / "model.safetensors", {tensors.begin(), tensors.end()}, {{"format", "pt"}});
  return dir;
}

fs::path neo_with_file(const fs::path& dir, const std::string& name, const std::string& content) {
  link_neo(dir);
  write_text(dir / name, content);
  return dir;
}

// ---- run directories ---------------------------------------------------------------------------

std::string key_of(const json& c) {
  return fmt::format("{}/{}/{}", c["prompt"].get<int>(), c["step"].get<int>(), c["hook"].get<std::string>());
}

std::set<std::string> capture_keys(const hooklens::RunReader& run) {
  std::set<std::string> keys;
  for (std::size_t i = 0; i < run.capture_count(); ++i) keys.insert(key_of(run.capture(i)));
  return keys;
}

std::string join_ids(const json& ids) {
  std::string s;
  for (const auto& id : ids) s += (s.empty() ? "" : ",") + std::to_string(id.get<std::int64_t>());
  return s;
}

hooklens::TensorMap reference(int prompt) {
  return hooklens::read_safetensors(neo_fixture() / fmt::format("reference_{}.safetensors", prompt));
}

// Every capture of the run is a prefill hook_pattern, compared with reference_<prompt> attn.L<layer>.
void check_prefill_patterns(hooklens::RunReader& run, double tolerance) {
  std::map<int, hooklens::TensorMap> refs;
  for (std::size_t i = 0; i < run.capture_count(); ++i) {
    const json& c = run.capture(i);
    INFO(c.dump());
    const int prompt = c["prompt"], layer = c["layer"];
    if (!refs.count(prompt)) refs[prompt] = reference(prompt);
    const at::Tensor expected = refs[prompt].at(fmt::format("attn.L{}", layer));
    CHECK(c["phase"] == "prefill");
    CHECK(c["query_offset"] == 0);
    CHECK(c["shape"].get<std::vector<std::int64_t>>() == expected.sizes().vec());
    CHECK(test::max_abs_diff(run.load(i), expected) <= tolerance);
  }
}

}  // namespace

TEST_CASE("hooklens --help and command-line usage errors") {
  TempDir tmp;
  const std::vector<std::string> commands{"info", "plugins", "capture", "generate", "bench", "demo-model"};
  std::vector<Invocation> help{{"app --help", {"--help"}, tmp / "help"}};
  for (const auto& c : commands) help.push_back({c + " --help", {c, "--help"}, tmp / ("help-" + c)});
  const auto helped = run_all(help);
  for (std::size_t i = 0; i < helped.size(); ++i) {
    INFO(helped[i].describe());
    CHECK(helped[i].code == 0);
    CHECK(helped[i].err.empty());
    CHECK_THAT(helped[i].out, Catch::Contains(i == 0 ? "Usage: hooklens" : "Usage: hooklens " + commands[i - 1]));
  }
  // Every subcommand is listed in the app's help.
  for (const auto& c : commands) CHECK_THAT(helped[0].out, Catch::Contains(c));

  const std::string model = link_neo(tmp / "model").string();
  struct Case {
    Invocation inv;
    std::vector<std::string> culprits;
  };
  const std::vector<Case> cases{
      {{"no subcommand", {}, tmp / "none"}, {"subcommand"}},
      {{"unknown option", {"capture", "--model", model, "--prompt", "hi", "--bogus"}, tmp / "bogus"}, {"--bogus"}},
      {{"unknown option before a missing one", {"capture", "--bogus"}, tmp / "bogus2"}, {"--bogus"}},
      {{"capture without --model", {"capture", "--prompt", "hi", "--out", "run"}, tmp / "nomodel"}, {"--model"}},
  };
  std::vector<Invocation> invocations;
  for (const auto& c : cases) invocations.push_back(c.inv);
  const auto outcomes = run_all(invocations);
  for (std::size_t i = 0; i < cases.size(); ++i) check_error(outcomes[i], 2, cases[i].culprits, cases[i].inv.cwd);
}

TEST_CASE("capture and generate on tiny-neo-a store exactly what was asked, equal to the reference", "[fixtures]") {
  TempDir tmp;
  const std::string model = link_neo(tmp / "model").string();
  const json prompts = fixture_prompts();
  const std::string text0 = prompts[0]["text"], text1 = prompts[1]["text"];
  const std::vector<std::string> base{"--model", model};
  auto args = [&](std::vector<std::string> head, std::vector<std::string> tail) {
    head.insert(head.end(), base.begin(), base.end());
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
  };
  const fs::path work = tmp / "work";
  const auto outcomes = run_all({
      {"capture two prompts",
       args({"capture"}, {"--prompt", text0, "--prompt", text1, "--hooks", "blocks.*.attn.hook_pattern", "--out",
                          "capture"}),
       work / "a"},
      {"generate layers 1,3",
       args({"generate"}, {"--prompt", text0, "--max-new-tokens", "12", "--hooks", "blocks.*.attn.hook_pattern",
                           "--layers", "1,3", "--out", "generate"}),
       work / "b"},
      {"capture F16", args({"capture"}, {"--prompt", text0, "--dtype", "F16", "--out", "f16"}), work / "c"},
      {"capture with --ablate 1.2",
       args({"capture"}, {"--prompt", text0, "--ablate", "1.2", "--hooks",
                          "blocks.1.attn.hook_z,blocks.1.attn.hook_pattern,blocks.2.attn.hook_pattern", "--out",
                          "ablate"}),
       work / "d"},
      {"capture --prompt-ids", args({"capture"}, {"--prompt-ids", join_ids(prompts[0]["input_ids"]), "--out", "ids"}),
       work / "e"},
  });
  for (const auto& o : outcomes) check_success(o);

  {  // two prompts: 2 prompts x 4 layers of hook_pattern, the reference attention
    hooklens::RunReader run(work / "a" / "capture");
    const json& m = run.manifest();
    CHECK(m["complete"] == true);
    CHECK(m["generation"]["mode"] == "none");
    std::set<std::string> expected;
    for (int p = 0; p < 2; ++p)
      for (int l = 0; l < 4; ++l) expected.insert(fmt::format("{}/0/blocks.{}.attn.hook_pattern", p, l));
    CHECK(capture_keys(run) == expected);
    CHECK(run.capture_count() == expected.size());
    for (int p = 0; p < 2; ++p) {
      CHECK(m["prompts"][p]["text"] == prompts[p]["text"]);
      CHECK(m["prompts"][p]["ids"] == prompts[p]["input_ids"]);
      CHECK(m["prompts"][p]["tokens"] == prompts[p]["token_strings"]);
    }
    check_prefill_patterns(run, 1e-5);
  }

  {  // generate --layers 1,3: layers 1 and 3 at steps 0-11, KV-cached shapes, greedy ids, reference
    hooklens::RunReader run(work / "b" / "generate");
    const json& g = run.manifest()["generation"];
    const json& expected_gen = prompts[0]["generation"];
    CHECK(g["mode"] == "autoregressive");
    CHECK(g["output_ids"] == expected_gen["sequence_ids"]);
    CHECK(g["new_ids"] == expected_gen["new_ids"]);
    const std::int64_t T = prompts[0]["num_tokens"];
    std::set<std::string> expected;
    for (int s = 0; s < 12; ++s)
      for (int l : {1, 3}) expected.insert(fmt::format("0/{}/blocks.{}.attn.hook_pattern", s, l));
    CHECK(capture_keys(run) == expected);
    CHECK(run.capture_count() == expected.size());
    const hooklens::TensorMap ref = reference(0);
    for (std::size_t i = 0; i < run.capture_count(); ++i) {
      const json& c = run.capture(i);
      INFO(c.dump());
      const int s = c["step"], l = c["layer"];
      const std::vector<std::int64_t> shape =
          s == 0 ? std::vector<std::int64_t>{1, 4, T, T} : std::vector<std::int64_t>{1, 4, 1, T + s};
      CHECK(c["shape"].get<std::vector<std::int64_t>>() == shape);
      CHECK(c["phase"] == (s == 0 ? "prefill" : "decode"));
      CHECK(c["query_offset"] == (s == 0 ? 0 : T + s - 1));
      CHECK(c["dtype"] == "F32");
      CHECK(test::max_abs_diff(run.load(i), ref.at(fmt::format("gen.step{}.attn.L{}", s, l))) <= 1e-5);
    }
  }

  {  // --dtype F16 stores F16
    hooklens::RunReader run(work / "c" / "f16");
    REQUIRE(run.capture_count() == 4);
    for (std::size_t i = 0; i < run.capture_count(); ++i) {
      CHECK(run.capture(i)["dtype"] == "F16");
      CHECK(run.load(i).scalar_type() == at::kHalf);
    }
    check_prefill_patterns(run, 1e-3);  // probabilities in [0, 1]: F16 rounds by at most 2^-11
  }

  {  // --ablate 1.2 zeroes head 2 of blocks.1.attn.hook_z, and only later layers change
    hooklens::RunReader run(work / "d" / "ablate");
    CHECK(capture_keys(run) == std::set<std::string>{"0/0/blocks.1.attn.hook_z", "0/0/blocks.1.attn.hook_pattern",
                                                      "0/0/blocks.2.attn.hook_pattern"});
    CHECK(run.manifest()["ablations"] == json{"1.2"});
    const hooklens::TensorMap ref = reference(0);
    for (std::size_t i = 0; i < run.capture_count(); ++i) {
      const json& c = run.capture(i);
      const at::Tensor t = run.load(i);
      INFO(c.dump());
      if (c["hook"] == "blocks.1.attn.hook_z") {
        REQUIRE(t.sizes() == at::IntArrayRef({1, 3, 4, 8}));  // [batch, pos, head, d_head]
        for (int h = 0; h < 4; ++h) {
          const double peak = t.select(2, h).abs().max().item<double>();
          if (h == 2) CHECK(peak == 0.0);
          else CHECK(peak > 1e-3);
        }
      } else if (c["hook"] == "blocks.1.attn.hook_pattern") {
        CHECK(test::max_abs_diff(t, ref.at("attn.L1")) <= 1e-5);  // computed before the ablated z
      } else {
        CHECK(test::max_abs_diff(t, ref.at("attn.L2")) > 1e-3);  // the ablation reached layer 2
      }
    }
  }

  {  // --prompt-ids gives the same run as the text
    hooklens::RunReader run(work / "e" / "ids");
    CHECK(run.manifest()["prompts"][0]["ids"] == prompts[0]["input_ids"]);
    CHECK(run.manifest()["prompts"][0]["text"] == prompts[0]["text"]);  // decoded from the ids
    CHECK(run.capture_count() == 4);
    check_prefill_patterns(run, 1e-5);
  }
}

TEST_CASE("bad requests are usage errors: exit 2, one line, no run left", "[fixtures]") {
  TempDir tmp;
  const std::string model = link_neo(tmp / "model").string();
  std::string long_prompt;
  for (int i = 0; i < 129; ++i) long_prompt += " a";  // 129 tokens; the context is 128
  struct Case {
    std::string name;
    std::vector<std::string> args;
    std::vector<std::string> culprits;
  };
  const std::vector<Case> cases{
      {"unknown hook",
       {"capture", "--prompt", "hi", "--hooks", "blocks.*.attn.hook_nope"},
       {"blocks.*.attn.hook_nope", "valid names", "blocks.{L}.attn.hook_pattern", "hook_logits"}},
      {"hook outside --layers", {"capture", "--prompt", "hi", "--hooks", "hook_embed", "--layers", "1"}, {"hook_embed"}},
      {"layer out of range", {"capture", "--prompt", "hi", "--layers", "4"}, {"--layers", "4"}},
      {"prompt longer than the context", {"capture", "--prompt", long_prompt}, {"129 tokens", "128"}},
      {"generation longer than the context",
       {"generate", "--prompt", "The cat is", "--max-new-tokens", "126"},
       {"--max-new-tokens", "128"}},
      {"prompt ids not numbers", {"capture", "--prompt-ids", "1,x"}, {"--prompt-ids", "'x'"}},
      {"prompt id outside the vocabulary", {"capture", "--prompt-ids", "1,50257"}, {"50257"}},
      {"--ablate outside the model", {"capture", "--prompt", "hi", "--ablate", "9.9"}, {"--ablate", "9.9"}},
      {"--temperature 0", {"generate", "--prompt", "hi", "--temperature", "0"}, {"temperature"}},
      {"--greedy with --temperature",
       {"generate", "--prompt", "hi", "--greedy", "--temperature", "1"},
       {"--greedy", "--temperature"}},
      {"--capture-steps past the run", {"generate", "--prompt", "hi", "--max-new-tokens", "4", "--capture-steps", "4"}, {"--capture-steps 4", "0-3"}},
      {"--capture-blocks on an autoregressive run", {"generate", "--prompt", "hi", "--capture-blocks", "0"}, {"--capture-blocks"}},
      {"--heads outside the model", {"capture", "--prompt", "hi", "--heads", "4"}, {"--heads 4"}},
      {"backwards --query-range", {"capture", "--prompt", "hi", "--query-range", "5:2"}, {"5:2"}},
      {"diffusion option on a causal model", {"generate", "--prompt", "hi", "--gen-length", "8"}, {"--gen-length", "autoregressive"}},
  };
  std::vector<Invocation> invocations;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    auto args = cases[i].args;
    args.insert(args.begin() + 1, {"--model", model, "--out", "run"});
    invocations.push_back({cases[i].name, args, tmp / fmt::format("case{}", i)});
  }
  const auto outcomes = run_all(invocations);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    check_error(outcomes[i], 2, cases[i].culprits, invocations[i].cwd);
    CHECK_FALSE(fs::exists(invocations[i].cwd / "run"));  // refused before anything was written
  }
}

TEST_CASE("broken models and directories are errors: exit 1, one line naming the file, no run left", "[fixtures]") {
  TempDir tmp;
  const fs::path models = tmp / "models";
  fs::create_directories(models / "empty");
  const std::string fixture_config = test::read_file(neo_fixture() / "config.json");
  const std::string fixture_weights = test::read_file(neo_fixture() / "model.safetensors");
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, fixture_weights.data(), 8);
  struct Case {
    std::string name;
    fs::path model;
    std::vector<std::string> culprits;
  };
  const std::vector<Case> cases{
      {"missing model directory", models / "nowhere", {"nowhere"}},
      {"empty directory", models / "empty", {"empty", "config.json"}},
      {"config.json not JSON", neo_with_file(models / "c1", "config.json", "{\"model_type\": \"gpt_neo\","),
       {"config.json"}},
      {"config.json without num_heads", neo_with_config(models / "c2", [](json& c) { c.erase("num_heads"); }),
       {"config.json", "num_heads"}},
      {"unknown model_type", neo_with_config(models / "c3", [](json& c) { c["model_type"] = "llamazoid"; }),
       {"gpt_neo", "gpt2", "llamazoid"}},
      {"hidden_size wrapping an int",
       neo_with_config(models / "c4", [](json& c) { c["hidden_size"] = (std::int64_t(1) << 32) + 32; }),
       {"config.json", "hidden_size"}},
      {"attention_types repeated a billion times", neo_with_config(models / "c5", [](json& c) {
         c.erase("attention_layers");
         c["attention_types"] = json::parse(R"([[["global", "local"], 1000000000]])");
       }),
       {"config.json", "attention_types"}},
      {"model.safetensors truncated", neo_with_file(models / "w1", "model.safetensors", fixture_weights.substr(0, 100000)),
       {"model.safetensors"}},
      {"model.safetensors cut inside its header",
       neo_with_file(models / "w2", "model.safetensors", fixture_weights.substr(0, 8 + header_size / 2)),
       {"model.safetensors", "header"}},
      {"header shape lies about the size", neo_with_header(models / "w4", [](json& h) {
         h["transformer.ln_f.bias"]["shape"] = {64};
       }),
       {"model.safetensors", "transformer.ln_f.bias"}},
      {"header offsets past the end", neo_with_header(models / "w5", [](json& h) {
         auto& offsets = h["transformer.ln_f.bias"]["data_offsets"];
         offsets = {offsets[0].get<std::uint64_t>() + (1ull << 40), offsets[1].get<std::uint64_t>() + (1ull << 40)};
       }),
       {"model.safetensors", "transformer.ln_f.bias"}},
      {"hidden_size changed: every tensor has the wrong shape",
       neo_with_config(models / "s1", [](json& c) { c["hidden_size"] = 64; }), {"transformer.wte.weight", "shape"}},
      {"missing tensor", neo_with_weights(models / "s3", [](hooklens::TensorMap& t) {
         t.erase("transformer.h.3.attn.attention.out_proj.bias");
       }),
       {"transformer.h.3.attn.attention.out_proj.bias"}},
      {"no weights at all", [&] {
         const fs::path dir = link_neo(models / "s4");
         fs::remove(dir / "model.safetensors");
         return dir;
       }(),
       {"no weights"}},
      {"vocab.json truncated", neo_with_file(models / "v1", "vocab.json", test::read_file(neo_fixture() / "vocab.json").substr(0, 5000)),
       {"vocab.json"}},
      {"merges.txt broken", neo_with_file(models / "v3", "merges.txt", "#version: 0.2\n\xc4\xa0 t\nthree symbols here\n"),
       {"merges.txt"}},
  };
  std::vector<Invocation> invocations;
  for (std::size_t i = 0; i < cases.size(); ++i)
    invocations.push_back({cases[i].name,
                           {"capture", "--model", cases[i].model.string(), "--prompt", "The cat is", "--out", "run"},
                           tmp / fmt::format("case{}", i)});
  const auto outcomes = run_all(invocations);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    check_error(outcomes[i], 1, cases[i].culprits, invocations[i].cwd);
    CHECK_FALSE(fs::exists(invocations[i].cwd / "run"));
  }
  CHECK(test::read_file(neo_fixture() / "config.json") == fixture_config);  // nothing was written through a link
}

// Hostile JSON (issue 13): a value nested a few thousand levels deep once overflowed the stack in
// nlohmann's recursive dump/copy/destroy, and a huge value was echoed whole into the error line.
TEST_CASE("deeply nested JSON and 100 KB values in model files: exit 1, one short line naming the file", "[fixtures]") {
  TempDir tmp;
  const fs::path models = tmp / "models";
  const std::string deep = std::string(5000, '[') + "2048" + std::string(5000, ']');
  const std::string huge = "\"" + std::string(100000, 'x') + "\"";
  // config.json with one value replaced by raw JSON text (built as text: the test must not build the value either).
  const auto config_with = [&](const fs::path& dir, const std::string& key, const std::string& raw) {
    neo_with_config(dir, [&](json& c) { c[key] = "@@VALUE@@"; });
    std::string text = test::read_file(dir / "config.json");
    text.replace(text.find("\"@@VALUE@@\""), 11, raw);
    write_text(dir / "config.json", text);
    return dir;
  };
  const auto header_with_shape = [&](const fs::path& dir, const std::string& raw) {
    neo_with_header(dir, [](json& h) { h["transformer.ln_f.bias"]["shape"] = "@@VALUE@@"; });
    std::string file = test::read_file(dir / "model.safetensors");
    std::uint64_t n = 0;
    std::memcpy(&n, file.data(), 8);
    std::string header = file.substr(8, n);
    header.replace(header.find("\"@@VALUE@@\""), 11, raw);
    const std::uint64_t size = header.size();
    write_text(dir / "model.safetensors", std::string(reinterpret_cast<const char*>(&size), 8) + header + file.substr(8 + n));
    return dir;
  };
  const fs::path sharded = [&] {  // weights through an index file only
    const fs::path dir = link_neo(models / "i1");
    fs::remove(dir / "model.safetensors");
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"a": )" + deep + "}}");
    return dir;
  }();
  const std::string nested = "nested deeper than 128 levels";
  struct Case {
    std::string name;
    std::vector<std::string> args;
    std::vector<std::string> culprits;
  };
  const fs::path deep_config = config_with(models / "c1", "max_position_embeddings", deep);
  const std::vector<Case> cases{
      {"capture: config.json value nested 5000 deep",
       {"capture", "--model", deep_config.string(), "--prompt", "The cat is", "--out", "run"}, {"config.json", nested}},
      {"info: config.json value nested 5000 deep", {"info", "--model", deep_config.string()}, {"config.json", nested}},
      {"info: 100 KB string as max_position_embeddings",
       {"info", "--model", config_with(models / "c2", "max_position_embeddings", huge).string()},
       {"config.json", "max_position_embeddings", "xxx..."}},
      {"capture: 100 KB string as activation_function",
       {"capture", "--model", config_with(models / "c3", "activation_function", huge).string(), "--prompt", "The cat is",
        "--out", "run"},
       {"config.json", "activation_function", "xxx..."}},
      {"info: 100 KB model_type", {"info", "--model", config_with(models / "c4", "model_type", huge).string()},
       {"config.json", "xxx..."}},
      {"capture: safetensors shape nested 5000 deep",
       {"capture", "--model", header_with_shape(models / "w1", deep).string(), "--prompt", "The cat is", "--out", "run"},
       {"model.safetensors", nested}},
      {"info: safetensors shape a 100 KB string",
       {"info", "--model", header_with_shape(models / "w2", "[" + huge + "]").string()},
       {"model.safetensors", "transformer.ln_f.bias", "xxx..."}},
      {"capture: weight index nested 5000 deep",
       {"capture", "--model", sharded.string(), "--prompt", "The cat is", "--out", "run"},
       {"model.safetensors.index.json", nested}},
      {"capture: vocab.json nested 5000 deep",
       {"capture", "--model", neo_with_file(models / "v1", "vocab.json", R"({"a": )" + deep + "}").string(), "--prompt",
        "The cat is", "--out", "run"},
       {"vocab.json", nested}},
      {"capture: tokenizer_config.json nested 5000 deep",
       {"capture", "--model", neo_with_file(models / "v2", "tokenizer_config.json", R"({"bos_token": )" + deep + "}").string(),
        "--prompt", "The cat is", "--out", "run"},
       {"tokenizer_config.json", nested}},
  };
  std::vector<Invocation> invocations;
  for (std::size_t i = 0; i < cases.size(); ++i) invocations.push_back({cases[i].name, cases[i].args, tmp / fmt::format("case{}", i)});
  const auto started = std::chrono::steady_clock::now();
  const auto outcomes = run_all(invocations);
  for (std::size_t i = 0; i < cases.size(); ++i) {
    check_error(outcomes[i], 1, cases[i].culprits, invocations[i].cwd);
    INFO(outcomes[i].describe());
    CHECK(outcomes[i].err.size() < 400);  // the value is cut to 60; paths and the plugin list make the rest
    CHECK_FALSE(fs::exists(invocations[i].cwd / "run"));
  }
  // Each refusal is quick: libtorch's ~1 s start-up, two at a time, and nothing to build or parse deeply.
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(4 * test::kSlowdown * cases.size()));
}

TEST_CASE("--out refuses an existing directory that is not a run, and leaves it untouched", "[fixtures]") {
  TempDir tmp;
  const std::string model = link_neo(tmp / "model").string();
  const fs::path keep = tmp / "keep";
  fs::create_directories(keep);
  write_text(keep / "notes.txt", "precious");
  const std::vector<std::string> args{"capture", "--model", model, "--prompt", "hi", "--out", keep.string()};
  auto with_overwrite = args;
  with_overwrite.push_back("--overwrite");
  const auto outcomes = run_all({{"existing directory", args, tmp / "a"}, {"--overwrite", with_overwrite, tmp / "b"}});
  for (const auto& o : outcomes) {
    const auto lines = lines_of(o.err);
    INFO(o.describe());
    CHECK((o.code == 1 || o.code == 2));
    REQUIRE(!lines.empty());
    CHECK(lines[0].rfind("hooklens: error: ", 0) == 0);
    CHECK_THAT(lines[0], Catch::Contains(keep.string()));
    CHECK((lines.size() == 1 || (o.code == 2 && lines.size() == 2)));
  }
  std::vector<fs::path> left;
  for (const auto& e : fs::directory_iterator(keep)) left.push_back(e.path());
  CHECK(left == std::vector<fs::path>{keep / "notes.txt"});
  CHECK(test::read_file(keep / "notes.txt") == "precious");
}

// ---- faults: kill -9, two writers, a full disk, a read-only directory ------------------------------

// Starts `inv` and kills it with SIGKILL as soon as `now(elapsed)` is true (polled every
// millisecond). Returns true if it was killed, false if it ended first.
bool kill_when(const Invocation& inv, const std::function<bool(std::chrono::milliseconds)>& now) {
  const auto t0 = std::chrono::steady_clock::now();
  const Running r = start(inv);
  for (;;) {
    int status = 0;
    if (waitpid(r.pid, &status, WNOHANG) == r.pid) return false;
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    if (now(elapsed) || std::chrono::steady_clock::now() > r.deadline) {
      kill(r.pid, SIGKILL);
      waitpid(r.pid, &status, 0);
      return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool file_named_exists(const fs::path& dir, const std::string& suffix) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  }
  return false;
}

// `hooklens analyze` and `hooklens render` refuse `run` (exit 1, one error line naming it) and
// leave nothing in it.
void check_readers_refuse(const fs::path& run, const fs::path& work) {
  std::set<std::string> before;
  std::error_code ec;
  for (fs::directory_iterator it(run, ec), end; !ec && it != end; it.increment(ec))
    before.insert(it->path().filename().string());
  const auto outcomes =
      run_all({{"analyze", {"analyze", run.string(), "--analyze", "attention_stats"}, work / "analyze"},
               {"render png", {"render", run.string(), "--format", "png"}, work / "render-png"},
               {"render html", {"render", run.string(), "--format", "html"}, work / "render-html"}});
  for (const auto& o : outcomes) {
    INFO(o.describe());
    CHECK(o.code == 1);
    const auto lines = lines_of(o.err);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].rfind("hooklens: error: " + (run / "manifest.json").string(), 0) == 0);
    const bool why = lines[0].find("is incomplete") != std::string::npos ||
                     lines[0].find("cannot open run manifest") != std::string::npos;
    CHECK(why);
  }
  std::set<std::string> after;
  for (fs::directory_iterator it(run, ec), end; !ec && it != end; it.increment(ec))
    after.insert(it->path().filename().string());
  CHECK(after == before);
}

TEST_CASE("kill -9 at any moment of a run never leaves a directory that claims to be complete", "[fixtures]") {
  TempDir tmp;
  const std::string neo = neo_fixture().string(), llada = (test::fixtures() / "llada-tiny-a").string();
  const std::vector<std::string> generate{"generate", "--model", neo, "--prompt", "The cat sat on the mat",
                                          "--max-new-tokens", "24", "--hooks", "*", "--out", "run"};
  const std::vector<std::string> capture{"capture", "--model", neo, "--prompt", "The cat sat on the mat",
                                         "--prompt", "A dog ran in the park and", "--prompt", "Once upon a time",
                                         "--hooks", "*", "--out", "run"};
  const std::vector<std::string> diffusion{"generate", "--model", llada, "--prompt-ids", "85,294,223,181",
                                           "--gen-length", "32", "--steps", "32", "--hooks", "*", "--out", "run"};
  using Moment = std::function<bool(const fs::path& run, const fs::path& err, std::chrono::milliseconds)>;
  const Moment after_50ms = [](auto&, auto&, auto t) { return t.count() >= 50; };
  const Moment after_200ms = [](auto&, auto&, auto t) { return t.count() >= 200; };
  const Moment after_500ms = [](auto&, auto&, auto t) { return t.count() >= 500; };
  const Moment directory = [](const fs::path& run, auto&, auto) { return fs::exists(run); };
  const Moment manifest = [](const fs::path& run, auto&, auto) { return fs::exists(run / "manifest.json"); };
  const Moment open_shard = [](const fs::path& run, auto&, auto) { return file_named_exists(run, ".safetensors.tmp"); };
  const Moment closed_shard = [](const fs::path& run, auto&, auto) { return file_named_exists(run, ".safetensors"); };
  const Moment progress = [](auto&, const fs::path& err, auto) {
    return test::read_file(err).find("generate: token") != std::string::npos;
  };
  struct Case {
    std::string name;
    std::vector<std::string> args;
    Moment moment;
    bool may_finish;  // the moment comes so late that the run may end before it is seen
    bool readers;     // also run analyze and render on what is left (each costs ~2 s)
  };
  const std::vector<Case> cases{
      {"generate, 50 ms", generate, after_50ms, false, false},
      {"generate, 200 ms", generate, after_200ms, false, false},
      {"generate, 500 ms", generate, after_500ms, false, false},
      {"generate, the directory appears", generate, directory, false, true},
      {"generate, the manifest appears", generate, manifest, false, true},
      {"generate, the first shard is open", generate, open_shard, false, false},
      {"generate, a progress line", generate, progress, false, false},
      {"generate, a shard is renamed into place", generate, closed_shard, true, true},
      {"capture, the first shard is open", capture, open_shard, false, false},
      {"capture, a shard is renamed into place", capture, closed_shard, true, true},
      {"masked diffusion, the manifest appears", diffusion, manifest, false, false},
      {"masked diffusion, the first shard is open", diffusion, open_shard, false, true},
  };
  int killed_with_a_run = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const Invocation inv{c.name, c.args, tmp / fmt::format("case{}", i)};
    const fs::path run = inv.cwd / "run";
    const bool killed = kill_when(inv, [&](std::chrono::milliseconds t) { return c.moment(run, err_file(inv), t); });
    INFO(c.name << (killed ? ": killed" : ": finished first") << "\n" << test::read_file(err_file(inv)));
    if (!killed) {
      CHECK(c.may_finish);
      CHECK(has_complete_run(inv.cwd));
      continue;
    }
    CHECK_FALSE(has_complete_run(inv.cwd));
    if (!fs::exists(run)) continue;
    if (fs::exists(run / "manifest.json")) ++killed_with_a_run;
    if (c.readers) check_readers_refuse(run, inv.cwd);
  }
  CHECK(killed_with_a_run >= 5);

  // What a killed writer leaves (its lock file too) does not stop the next run.
  const fs::path killed_run = tmp / "case5" / "run";
  REQUIRE(fs::exists(killed_run / "manifest.json"));
  const auto rerun = run_one({"rerun with --overwrite",
                              {"generate", "--model", neo, "--prompt", "hi", "--max-new-tokens", "2", "--overwrite",
                               "--out", killed_run.string()},
                              tmp / "rerun"});
  check_success(rerun);
  CHECK(hooklens::RunReader(killed_run).manifest()["prompts"][0]["text"] == "hi");
}

TEST_CASE("two processes writing one --out: the second is refused, the first's run stays its own", "[fixtures]") {
  TempDir tmp;
  const fs::path out = tmp / "shared-run";
  const std::string neo = neo_fixture().string();
  const Invocation first{"first", {"generate", "--model", neo, "--prompt", "The first run", "--max-new-tokens", "100",
                                   "--out", out.string()},
                         tmp / "first"};
  const Running a = start(first);
  // Its writer owns the directory once its manifest is there.
  while (!fs::exists(out / "manifest.json") && std::chrono::steady_clock::now() < a.deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // Paused while the others try, so that it is still writing whatever the machine's speed.
  REQUIRE(kill(a.pid, SIGSTOP) == 0);
  const std::vector<std::string> second{"generate", "--model", neo, "--prompt", "The second run", "--max-new-tokens",
                                        "4", "--out", out.string()};
  auto overwrite = second;
  overwrite.push_back("--overwrite");
  const auto refused = run_all({{"second, --overwrite", overwrite, tmp / "second"}, {"third", second, tmp / "third"}});
  REQUIRE(kill(a.pid, SIGCONT) == 0);
  int status = 0;
  waitpid(a.pid, &status, 0);
  const std::string first_err = test::read_file(err_file(first));
  INFO("first: exit " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1) << "\n" << first_err);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  for (const auto& o : refused) {
    INFO(o.describe());
    CHECK(o.code == 1);
    const auto lines = lines_of(o.err);
    REQUIRE(lines.size() == 1);
    CHECK_THAT(lines[0], Catch::StartsWith("hooklens: error: " + out.string()) &&
                             Catch::Contains(fmt::format("is being written by another process (pid {})", a.pid)));
  }
  hooklens::RunReader run(out);
  CHECK(run.manifest()["prompts"].size() == 1);
  CHECK(run.manifest()["prompts"][0]["text"] == "The first run");
  CHECK(run.manifest()["generation"]["output_ids"].size() == run.manifest()["prompts"][0]["ids"].size() + 100);
  std::set<int> steps;
  for (std::size_t i = 0; i < run.capture_count(); ++i) steps.insert(run.capture(i)["step"].get<int>());
  CHECK(steps.size() == 100);  // prefill and 99 decode steps: every capture is the first run's
  CHECK_FALSE(fs::exists(out / ".hooklens-writer.lock"));
}

// A run that failed on its way: exit 1, its stderr ends with the one error line (progress lines may
// come before it), naming every culprit, and nothing below `root` looks like a complete run.
void check_failed_run(const Outcome& o, const std::vector<std::string>& culprits, const fs::path& root) {
  INFO(o.describe());
  CHECK(o.code == 1);
  const auto lines = lines_of(o.err);
  REQUIRE(!lines.empty());
  const auto errors = std::count_if(lines.begin(), lines.end(),
                                    [](const std::string& l) { return l.find("error") != std::string::npos; });
  CHECK(errors == 1);
  CHECK(lines.back().rfind("hooklens: error: ", 0) == 0);
  for (const auto& culprit : culprits) CHECK_THAT(lines.back(), Catch::Contains(culprit));
  CHECK_FALSE(has_complete_run(root));
}

TEST_CASE("a full disk and a read-only --out: exit 1, one error line, no run that looks complete", "[fixtures]") {
  test::TmpfsMount disk("2m");
  if (!disk.mounted) {
    test::skip(disk.why + " (as root it can): the full-disk case did not run");
    return;
  }
  TempDir tmp;
  const std::string neo = neo_fixture().string();
  // Every hook point of one prompt of 20 tokens: about 4 MB of captures (one prompt: no progress lines).
  const std::vector<std::string> big{"capture", "--model", neo, "--prompt",
                                     "The cat sat on the mat and the dog ran in the park, and then they all went home",
                                     "--hooks", "*"};
  auto full = big;
  full.insert(full.end(), {"--out", (disk.path / "full").string()});
  const auto o = run_one({"disk full", full, tmp / "full"});
  check_failed_run(o, {(disk.path / "full").string(), "No space left on device"}, disk.path);
  for (const auto& e : fs::directory_iterator(disk.path / "full")) {
    const std::string name = e.path().filename().string();
    INFO(name);
    CHECK(name.find(".tmp") == std::string::npos);
    CHECK(name != ".hooklens-writer.lock");
    if (name != "manifest.json") CHECK_NOTHROW(hooklens::read_safetensors(e.path()));
  }
  if (fs::exists(disk.path / "full" / "manifest.json")) check_readers_refuse(disk.path / "full", tmp / "readers");

  // Read-only: a new directory, and a previous run that --overwrite must not touch.
  fs::remove_all(disk.path / "full");
  require_hooklens_run({"capture", "--model", neo, "--prompt", "hi", "--out", (disk.path / "old").string()},
                       tmp / "old");
  if (!disk.remount_read_only()) {
    test::skip("cannot remount the tmpfs read-only: the read-only part did not run");
    return;
  }
  std::vector<Invocation> invocations;
  for (const char* name : {"new", "old"}) {
    std::vector<std::string> args{"capture", "--model", neo, "--prompt", "hi", "--overwrite", "--out",
                                  (disk.path / name).string()};
    invocations.push_back({std::string("read-only ") + name, args, tmp / fmt::format("ro-{}", name)});
  }
  for (const auto& r : run_all(invocations)) check_failed_run(r, {disk.path.string(), "Read-only file system"}, tmp.path);
  CHECK_FALSE(fs::exists(disk.path / "new"));
  CHECK(hooklens::RunReader(disk.path / "old").manifest()["prompts"][0]["text"] == "hi");
}

TEST_CASE("hooklens plugins lists the plugins and warns about a broken library") {
  TempDir tmp;
  const fs::path bad = tmp / "bad-plugins";
  fs::create_directories(bad);
  write_text(bad / "hooklens_bad.so", "this is not a shared library\n");
  // A real plugin cut short: mapping it without checks would kill the process with SIGBUS.
  write_text(bad / "hooklens_cut.so", test::read_file(test::plugin_file("gpt2")).substr(0, 4096));
  write_text(bad / "hooklens_empty.so", "");
  // A real plugin linked against a libtorch that is not here (its soname changed in a copy).
  std::string other_torch = test::read_file(test::plugin_file("gpt2"));
  const std::size_t soname = other_torch.find("libtorch_cpu.so");
  REQUIRE(soname != std::string::npos);
  other_torch[soname + 11] = 'X';
  write_text(bad / "hooklens_other_torch.so", other_torch);
  std::vector<std::string> culprits{"hooklens_bad.so", "hooklens_cut.so", "hooklens_empty.so", "hooklens_other_torch.so"};
  // A plugin that loads here but says it was built against libtorch 9.9.9 (tests/plugins/bad_descriptor.cpp).
  fs::copy_file(test::build_dir() / "test_plugins/bad/hooklens_other_torch.so", bad / "hooklens_torch_999.so");
  culprits.push_back("hooklens_torch_999.so");
  // A shared library that is no hooklens plugin.
  if (fs::exists("/usr/lib/x86_64-linux-gnu/libz.so.1")) {
    fs::copy_file("/usr/lib/x86_64-linux-gnu/libz.so.1", bad / "hooklens_zlib.so");
    culprits.push_back("hooklens_zlib.so");
  }
  const auto outcomes = run_all({{"plugins", {"plugins"}, tmp / "a", {"HOOKLENS_PLUGIN_PATH="}},
                                 {"plugins with broken libraries", {"plugins"}, tmp / "b",
                                  {"HOOKLENS_PLUGIN_PATH=" + bad.string()}}});
  for (const auto& o : outcomes) {
    INFO(o.describe());
    CHECK(o.code == 0);
    std::set<std::string> listed;  // "KIND NAME" of each table row
    for (const auto& line : lines_of(o.out)) {
      std::istringstream row(line);
      std::string kind, name;
      if (row >> kind >> name) listed.insert(kind + " " + name);
    }
    for (const char* plugin : {"adapter gpt_neo", "adapter gpt2", "sink run_writer"}) CHECK(listed.count(plugin));
  }
  CHECK(outcomes[0].err.empty());
  const auto warnings = lines_of(outcomes[1].err);
  INFO(outcomes[1].describe());
  CHECK(warnings.size() == culprits.size());
  for (const auto& file : culprits) {
    const bool named = std::any_of(warnings.begin(), warnings.end(), [&](const std::string& w) {
      return w.rfind("hooklens: warning: ", 0) == 0 && w.find((bad / file).string()) != std::string::npos;
    });
    CHECK(named);
  }
  CHECK(std::count(warnings.begin(), warnings.end(),
                   "hooklens: warning: " + (bad / "hooklens_torch_999.so").string() +
                       ": plugin was built with libtorch 9.9.9, this hooklens with libtorch " TORCH_VERSION
                       "; rebuild the plugin against this hooklens") == 1);
}

TEST_CASE("hooklens info --json describes tiny-neo-a and its hook points", "[fixtures]") {
  TempDir tmp;
  const Outcome o = run_one({"info --json", {"info", "--json", "--model", link_neo(tmp / "model").string()}, tmp / "a"});
  check_success(o);
  const json info = json::parse(o.out, nullptr, false);
  INFO(o.describe());
  REQUIRE(info.is_object());
  CHECK(info["model"]["adapter"] == "gpt_neo");
  CHECK(info["model"]["n_layers"] == 4);
  CHECK(info["model"]["n_heads"] == 4);
  CHECK(info["model"]["n_ctx"] == 128);
  CHECK(info["model"]["vocab_size"] == 50257);
  // The TransformerLens names of DESIGN.md, per layer and model-wide.
  std::set<std::string> expected{"hook_embed", "hook_pos_embed", "ln_final.hook_normalized", "hook_logits"};
  for (int l = 0; l < 4; ++l)
    for (const char* name : {"hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
                             "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre",
                             "mlp.hook_post", "hook_mlp_out", "hook_resid_post"})
      expected.insert(fmt::format("blocks.{}.{}", l, name));
  std::set<std::string> names;
  for (const auto& p : info["hook_points"]) names.insert(p["name"].get<std::string>());
  CHECK(names == expected);
  CHECK(info["hook_points"].size() == expected.size());
}

TEST_CASE("hooklens demo-model writes a model that capture runs end to end") {
  TempDir tmp;
  const Outcome made = run_one({"demo-model", {"demo-model", "--out", "demo"}, tmp / "a"});
  check_success(made);
  const fs::path demo = tmp / "a" / "demo";
  const Outcome captured =
      run_one({"capture on the demo model", {"capture", "--model", demo.string(), "--prompt", "hi there", "--out", "run"},
               tmp / "b"});
  check_success(captured);
  hooklens::RunReader run(tmp / "b" / "run");
  // The demo tokenizer is byte-level: one token per byte.
  const std::string prompt = "hi there";
  CHECK(run.manifest()["prompts"][0]["ids"] == std::vector<std::int64_t>(prompt.begin(), prompt.end()));
  REQUIRE(run.capture_count() == 4);
  for (std::size_t i = 0; i < run.capture_count(); ++i) {
    const at::Tensor p = run.load(i);
    INFO(run.capture(i).dump());
    REQUIRE(p.sizes() == at::IntArrayRef({1, 4, 8, 8}));
    // Rows are probability distributions over the keys a causal query may see.
    CHECK(test::max_abs_diff(p.sum(-1), at::ones({1, 4, 8})) <= 1e-5);
    CHECK(p.triu(1).abs().max().item<double>() == 0.0);
  }
}

// The decoded text of every token of a GPT-2 vocab.json, worked out here rather than by hooklens's
// tokenizer: each character of a symbol stands for one byte (printable bytes for themselves, the
// others for 256, 257, ... in byte order), and the bytes are decoded as UTF-8 with replacement.
std::map<std::int64_t, std::string> gpt2_token_strings(const fs::path& vocab_json) {
  std::map<std::uint32_t, char> byte_of;  // symbol code point -> byte
  std::uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    byte_of[printable ? std::uint32_t(b) : next++] = char(b);
  }
  const json vocab = json::parse(test::read_file(vocab_json));
  std::map<std::int64_t, std::string> out;
  for (const auto& [symbol, id] : vocab.items()) {
    std::string bytes;
    for (std::size_t i = 0; i < symbol.size();) {  // symbols are code points below 0x800: 1 or 2 UTF-8 bytes
      const auto c = static_cast<unsigned char>(symbol[i]);
      const bool two = (c & 0xE0) == 0xC0 && i + 1 < symbol.size();
      const std::uint32_t code = two ? (c & 0x1Fu) << 6 | (static_cast<unsigned char>(symbol[i + 1]) & 0x3Fu) : c;
      if (!byte_of.count(code)) FAIL(vocab_json.string() << ": symbol " << symbol << " is not byte-level");
      bytes += byte_of.at(code);
      i += two ? 2 : 1;
    }
    out[id.get<std::int64_t>()] = hooklens::utf8_decode_replace(bytes);
  }
  return out;
}

TEST_CASE("masked diffusion from the CLI: the upstream sampler's sequence, sliced captures, usage errors", "[fixtures]") {
  TempDir tmp;
  const fs::path llada = test::fixtures() / "llada-tiny-a";
  const std::string prompt = "85,294,223,181,193,390,258,97,335,300,120,241";
  const auto ok = run_all({{"full", {"generate", "--model", llada.string(), "--prompt-ids", prompt, "--gen-length", "16",
                                     "--steps", "8", "--block-length", "8", "--out", "run"}, tmp / "full"},
                           {"sliced", {"generate", "--model", llada.string(), "--prompt-ids", prompt, "--gen-length", "16",
                                       "--steps", "8", "--block-length", "8", "--query-range", "12:", "--key-range", ":12",
                                       "--heads", "3,1", "--capture-blocks", "1", "--dtype", "F16", "--out", "run"},
                            tmp / "sliced"},
                           // tiny-neo-a's GPT-2 tokenizer covers LLaDA's 512 ids (as prompt ids: its text would not)
                           {"tokenizer", {"generate", "--model", llada.string(), "--tokenizer", neo_fixture().string(),
                                          "--prompt-ids", prompt, "--gen-length", "16", "--steps", "8", "--block-length",
                                          "8", "--out", "run"}, tmp / "tokenizer"}});
  for (const auto& r : ok) check_success(r);
  const hooklens::TensorMap ref = hooklens::read_safetensors(llada / "reference_0.safetensors");
  {
    hooklens::RunReader run(tmp / "full" / "run");
    const json& g = run.manifest()["generation"];
    CHECK(g["mode"] == "masked_diffusion");
    const at::Tensor final_x = ref.at("final.x").reshape({-1});
    CHECK(g["output_ids"].get<std::vector<std::int64_t>>() ==
          std::vector<std::int64_t>(final_x.data_ptr<std::int64_t>(), final_x.data_ptr<std::int64_t>() + final_x.numel()));
    REQUIRE(g["steps"].size() == 8);
    REQUIRE(run.capture_count() == 16);
    for (std::size_t i = 0; i < run.capture_count(); ++i) {
      const json& c = run.capture(i);
      CHECK(c["phase"] == "denoise");
      CHECK(c["block"] == c["step"].get<int>() / 4);
      const at::Tensor expected = ref.at(fmt::format("step{}.attn.L{}", c["step"].get<int>(), c["layer"].get<int>()));
      CHECK(test::max_abs_diff(run.load(i), expected) < 1e-5);
    }
  }
  {
    hooklens::RunReader run(tmp / "sliced" / "run");
    REQUIRE(run.capture_count() == 8);  // 2 layers x the 4 steps of block 1
    for (std::size_t i = 0; i < run.capture_count(); ++i) {
      const json& c = run.capture(i);
      CHECK(c["block"] == 1);
      CHECK(c["query_offset"] == 12);
      CHECK(c["key_offset"] == 0);
      CHECK(c["dtype"] == "F16");
      const at::Tensor full = ref.at(fmt::format("step{}.attn.L{}", c["step"].get<int>(), c["layer"].get<int>()));
      const at::Tensor expected = full.index_select(1, at::tensor({3, 1}, at::kLong)).narrow(2, 12, 16).narrow(3, 0, 12);
      CHECK(test::max_abs_diff(run.load(i), expected) < 1e-3);
    }
    CHECK(run.manifest()["capture"]["heads"] == json({3, 1}));
  }
  {  // generation.token_strings: the tokenizer's string of every id of the sequences, only with a tokenizer
    const json plain = hooklens::RunReader(tmp / "full" / "run").manifest();
    const json m = hooklens::RunReader(tmp / "tokenizer" / "run").manifest();
    const json& g = m["generation"];
    CHECK_FALSE(plain["generation"].contains("token_strings"));
    CHECK(g["output_ids"] == plain["generation"]["output_ids"]);  // the tokenizer changes only the strings
    REQUIRE(g.contains("token_strings"));
    auto ids = m["prompts"][0]["ids"].get<std::set<std::int64_t>>();
    for (const json& step : g["steps"])
      for (const json& id : step["ids"]) ids.insert(id.get<std::int64_t>());
    REQUIRE(g["mask_id"] == 500);
    REQUIRE(ids.erase(500) == 1);  // the steps before the last hold masks, which get no string
    const auto decoded = gpt2_token_strings(neo_fixture() / "vocab.json");
    json expected = json::object();
    for (auto id : ids) expected[std::to_string(id)] = decoded.at(id);
    CHECK(g["token_strings"] == expected);
    for (const json& id : g["steps"].back()["ids"]) CHECK(g["token_strings"].contains(id.dump()));
  }
  const std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>> bad{
      {{"--gen-length", "10", "--block-length", "4"}, {"not a multiple of block length"}},
      {{"--gen-length", "16", "--block-length", "8", "--steps", "3"}, {"multiple of the number of blocks"}},
      {{"--max-new-tokens", "4"}, {"--max-new-tokens", "masked-diffusion"}},
      {{"--remasking", "sometimes"}, {"--remasking", "sometimes"}},
      {{"--gen-length", "250"}, {"--gen-length 250", "256"}},
  };
  std::vector<Invocation> invocations;
  for (std::size_t i = 0; i < bad.size(); ++i) {
    std::vector<std::string> args{"generate", "--model", llada.string(), "--prompt-ids", prompt, "--out", "run"};
    args.insert(args.end(), bad[i].first.begin(), bad[i].first.end());
    invocations.push_back({fmt::format("diffusion usage {}", i), args, tmp / fmt::format("bad{}", i)});
  }
  const auto outcomes = run_all(invocations);
  for (std::size_t i = 0; i < bad.size(); ++i) {
    check_error(outcomes[i], 2, bad[i].second, invocations[i].cwd);
    CHECK_FALSE(fs::exists(invocations[i].cwd / "run"));
  }
}

namespace {

// llada-tiny-a (512 ids) with a LLaDA-style tokenizer: bytes at their own ids, a few merges,
// fillers, the special tokens at 490..500 (the mask at 500, as the model's config has it), a
// post-processor that adds BOS, and (with_template) LLaDA's chat template.
fs::path llada_with_chat_tokenizer(const fs::path& dir, bool with_template) {
  fs::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors"})
    fs::create_symlink(test::fixtures() / "llada-tiny-a" / file, dir / file);
  const auto sym = [](const std::string& raw) {
    std::string s;
    for (const char c : raw) s += hooklens::gpt2_byte_symbol(static_cast<unsigned char>(c));
    return s;
  };
  json vocab = json::object(), merges = json::array();
  for (int b = 0; b < 256; ++b) vocab[sym(std::string(1, char(b)))] = b;
  for (const auto& [a, b] : std::vector<std::pair<std::string, std::string>>{
           {"\n", "\n"}, {"H", "i"}, {"u", "s"}, {"e", "r"}, {"us", "er"}}) {
    merges.push_back({sym(a), sym(b)});
    const auto id = vocab.size();
    vocab[sym(a + b)] = id;
  }
  while (vocab.size() < 490) {
    const auto id = vocab.size();
    vocab["<filler" + std::to_string(id) + ">"] = id;
  }
  const std::vector<std::string> specials = {"<|startoftext|>", "<|endoftext|>", "<|start_header_id|>",
                                             "<|end_header_id|>", "<|eot_id|>"};
  json added = json::array();
  for (std::int64_t id = 490; id <= 500; ++id) {
    const std::string content = id < 495 ? specials[std::size_t(id - 490)]
                                         : id == 500 ? "<|mdm_mask|>" : "<|reserved_" + std::to_string(id) + "|>";
    added.push_back({{"id", id}, {"content", content}, {"special", true}, {"lstrip", false}, {"rstrip", false},
                     {"single_word", false}, {"normalized", false}});
  }
  const json bos_template = {
      {"type", "TemplateProcessing"},
      {"single", json::array({{{"SpecialToken", {{"id", "<|startoftext|>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"special_tokens", {{"<|startoftext|>", {{"id", "<|startoftext|>"}, {"ids", {490}}, {"tokens", {"<|startoftext|>"}}}}}}};
  const json tokenizer = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"},
                       {"pattern",
                        {{"Regex",
                          R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
                       {"behavior", "Isolated"},
                       {"invert", false}},
                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}}},
      {"post_processor", {{"type", "Sequence"}, {"processors", json::array({{{"type", "ByteLevel"}}, bos_template})}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab}, {"merges", merges}}}};
  write_text(dir / "tokenizer.json", tokenizer.dump());
  if (with_template)
    write_text(dir / "tokenizer_config.json",
               json{{"bos_token", "<|startoftext|>"},
                    {"eos_token", "<|endoftext|>"},
                    {"model_max_length", json::parse("1000000000000000019884624838656")},
                    {"chat_template",
                     R"({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }})"}}
                   .dump());
  return dir;
}

}  // namespace

TEST_CASE("--chat: the model's chat template around one user message, without the post-processor's BOS", "[fixtures]") {
  TempDir tmp;
  const std::string model = llada_with_chat_tokenizer(tmp / "model", true).string();
  const std::string plain = llada_with_chat_tokenizer(tmp / "plain", false).string();
  const std::vector<std::string> diffusion{"--gen-length", "8", "--steps", "2", "--block-length", "8", "--hooks",
                                           "blocks.0.attn.hook_pattern", "--out", "run"};
  const auto generate = [&](const std::string& m, std::vector<std::string> args) {
    args.insert(args.begin(), {"generate", "--model", m});
    args.insert(args.end(), diffusion.begin(), diffusion.end());
    return args;
  };
  const auto outcomes = run_all({
      {"chat", generate(model, {"--prompt", "Hi", "--chat"}), tmp / "chat"},
      {"capture chat", {"capture", "--model", model, "--prompt", " Hi ", "--chat", "--out", "run"}, tmp / "capture"},
      {"no chat", generate(model, {"--prompt", "Hi"}), tmp / "plain-prompt"},
      {"no template", generate(plain, {"--prompt", "Hi", "--chat"}), tmp / "no-template"},
      {"ids", generate(model, {"--prompt-ids", "1,2", "--chat"}), tmp / "ids"},
  });
  for (std::size_t i = 0; i < 3; ++i) check_success(outcomes[i]);
  // By hand: <|startoftext|> <|start_header_id|> "user" (u s -> us, e r -> er, us er -> user: 260)
  // <|end_header_id|> "\n\n" (256) "Hi" (257) <|eot_id|> <|start_header_id|> "assistant" (bytes)
  // <|end_header_id|> "\n\n". One BOS: the template's; the post-processor adds none.
  const std::vector<std::int64_t> expected = {490, 492, 260, 493, 256, 257, 494, 492, 'a', 's', 's', 'i', 's',
                                              't', 'a', 'n', 't', 493, 256};
  const std::string text = "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n";
  for (const char* dir : {"chat", "capture"}) {
    INFO(dir);
    const json m = hooklens::RunReader(tmp / dir / "run").manifest();
    CHECK(m["prompts"][0]["text"] == text);
    CHECK(m["prompts"][0]["ids"].get<std::vector<std::int64_t>>() == expected);
  }
  // Without --chat the text is the prompt, and the post-processor's BOS comes first.
  const json m = hooklens::RunReader(tmp / "plain-prompt" / "run").manifest();
  CHECK(m["prompts"][0]["text"] == "Hi");
  CHECK(m["prompts"][0]["ids"].get<std::vector<std::int64_t>>() == std::vector<std::int64_t>{490, 257});
  check_error(outcomes[3], 2, {"no chat template", "tokenizer_config.json"}, tmp / "no-template");
  check_error(outcomes[4], 2, {"--chat", "--prompt"}, tmp / "ids");
}

TEST_CASE("--hooks none runs without capture; every run ends with its timing on stderr", "[fixtures]") {
  TempDir tmp;
  const std::string model = link_neo(tmp / "model").string();
  const std::string args = fmt::format("generate --model '{}' --prompt 'The cat sat on the' --max-new-tokens 8", model);
  test::require_hooklens(args + fmt::format(" --hooks none --out '{}'", (tmp / "plain").string()), tmp / "plain.log");
  test::require_hooklens(args + fmt::format(" --out '{}'", (tmp / "captured").string()), tmp / "captured.log");
  const json plain = json::parse(test::read_file(tmp / "plain" / "manifest.json"));
  const json captured = json::parse(test::read_file(tmp / "captured" / "manifest.json"));
  CHECK(plain["complete"] == true);
  CHECK(plain["captures"].empty());
  CHECK(captured["captures"].size() == 8 * 4);
  CHECK(plain["generation"]["output_ids"] == captured["generation"]["output_ids"]);  // capture changes nothing
  const std::string log = test::read_file(tmp / "plain.log");
  CHECK_THAT(log, Catch::Matches("(.|\n)*timing: load [0-9.]+ s; prefill 5 tokens [0-9]+ ms \\([0-9]+ tok/s\\); "
                                 "decode 7 tokens [0-9.]+ s \\([0-9.]+ tok/s\\)(.|\n)*"));
  // Slicing options with nothing to slice are a mistake.
  CHECK(test::run_hooklens(args + " --hooks none --layers 1", tmp / "bad.log") == 2);
  CHECK_THAT(test::read_file(tmp / "bad.log"), Catch::Contains("--hooks none"));
}

TEST_CASE("hooklens bench runs its cases and the peer's computation gives hooklens's greedy tokens", "[fixtures]") {
  TempDir tmp;
  const std::string model = link_neo(tmp / "model").string();
  // tiny-neo-a's context is 128: a short run of every case (the figures are the benchmark's, not the test's).
  test::require_hooklens(fmt::format("bench --model '{}' --repeats 1 --prompt-tokens 16 --new-tokens 8 --sequences 2 "
                                     "--tokens 32 --threads 1",
                                     model),
                         tmp / "bench.log");
  const std::string log = test::read_file(tmp / "bench.log");
  for (const char* c : {"generate 8 from 16, no hooks", "generate 8 from 16, patterns -> disk",
                        "generate 8 from 16, peer (output_attentions)", "forward 2 x 32, logits, no hooks",
                        "capture 2 x 32, patterns -> disk", "forward 2 x 32, peer (output_attentions)"})
    CHECK_THAT(log, Catch::Contains(c));
  CHECK_THAT(log, Catch::Contains("greedy tokens identical"));
}

TEST_CASE("capture --batch-size runs prompts of one length together and stores what one at a time stores", "[fixtures]") {
  TempDir tmp;
  const std::string model = link_neo(tmp / "model").string();
  // Five prompts: four of 6 tokens (one batch of 3, then one of 1 when the length changes), one of 4.
  std::string args = fmt::format("capture --model '{}' --hooks 'blocks.*.attn.hook_pattern,blocks.1.hook_resid_post,"
                                 "blocks.3.attn.hook_z' --analyze attention_stats --ablate 2.1",
                                 model);
  for (const char* ids : {"10,20,30,40,50,60", "11,21,31,41,51,61", "12,22,32,42,52,62", "1,2,3,4", "13,23,33,43,53,63"})
    args += fmt::format(" --prompt-ids {}", ids);
  test::require_hooklens(args + fmt::format(" --out '{}'", (tmp / "one").string()), tmp / "one.log");
  test::require_hooklens(args + fmt::format(" --batch-size 3 --out '{}'", (tmp / "batched").string()), tmp / "batched.log");
  hooklens::RunReader one(tmp / "one"), batched(tmp / "batched");
  const json& a = one.manifest()["captures"];
  const json& b = batched.manifest()["captures"];
  REQUIRE(a.size() == 5 * 6);
  REQUIRE(a.size() == b.size());
  std::map<std::string, std::size_t> where;  // hook@prompt -> index in the batched run
  for (std::size_t i = 0; i < b.size(); ++i) where[fmt::format("{}@{}", b[i]["hook"].get<std::string>(), b[i]["prompt"].get<int>())] = i;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::string key = fmt::format("{}@{}", a[i]["hook"].get<std::string>(), a[i]["prompt"].get<int>());
    INFO(key);
    REQUIRE(where.count(key));
    const std::size_t j = where[key];
    CHECK(a[i]["shape"] == b[j]["shape"]);
    CHECK(a[i]["query_offset"] == b[j]["query_offset"]);
    // Within float32 rounding: BLAS sums a batch's rows in other blocks than a single sequence's.
    CHECK(test::max_abs_diff(one.load(i), batched.load(j)) < 1e-5);
  }
  // The ablation reached every row; the live analyzer saw the same events and the same numbers.
  const json ra = json::parse(test::read_file(tmp / "one" / "reports" / "attention_stats.json"));
  const json rb = json::parse(test::read_file(tmp / "batched" / "reports" / "attention_stats.json"));
  std::function<void(const json&, const json&, const std::string&)> same = [&](const json& x, const json& y,
                                                                             const std::string& path) {
    INFO(path);
    if (x.is_number() && y.is_number()) {
      CHECK(std::abs(x.get<double>() - y.get<double>()) < 1e-5);
    } else if (x.is_structured()) {
      REQUIRE(x.size() == y.size());
      for (auto it = x.begin(); it != x.end(); ++it)
        same(*it, x.is_object() ? y.at(it.key()) : y.at(std::size_t(std::distance(x.begin(), it))),
             path + "/" + (x.is_object() ? it.key() : std::to_string(std::distance(x.begin(), it))));
    } else {
      CHECK(x == y);
    }
  };
  same(ra, rb, "");
}
