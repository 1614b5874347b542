// Runs over several processes (docs/distributed.md), on 127.0.0.1 with ports free at run time:
// build/bin/hooklens started as ranks the way scripts/launch.sh starts them. One process and three
// over the same 12 sequences give byte-identical captures (by key) and equal reports; a rank killed
// with -9 stops the others within --timeout, naming it, with no complete manifest, and --resume
// completes the run; --local-out parts joined by `hooklens merge`; the refusals. Every process is
// bounded in time and killed by the test if it outlives its bound.
#include "report_util.h"
#include "test_util.h"

#include <hooklens/distributed.h>
#include <hooklens/run.h>
#include <hooklens/run_parts.h>
#include <hooklens/text.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <csignal>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <thread>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A TCP port nobody listens on now (the kernel's choice), for rank 0 to serve the store on.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0);
  ::close(fd);
  return ntohs(address.sin_port);
}

// Processes of one run, started as ranks first..first+count-1 of `world` with the torchrun
// variables; each writes its output to DIR/rank-R.log. Killed (-9) if still running at the end.
class Ranks {
 public:
  Ranks(const fs::path& dir, int world, const std::vector<std::string>& args_of_rank, int port, int first = 0)
      : dir_(dir) {
    for (std::size_t i = 0; i < args_of_rank.size(); ++i) {
      const int rank = first + int(i);
      logs_.push_back(dir / fmt::format("rank-{}.log", rank));
      const std::string command = fmt::format(
          "RANK={} WORLD_SIZE={} LOCAL_RANK={} MASTER_ADDR=127.0.0.1 MASTER_PORT={} exec '{}' {} >'{}' 2>&1", rank, world,
          rank, port, (test::build_dir() / "bin/hooklens").string(), args_of_rank[i], logs_.back().string());
      const pid_t pid = fork();
      if (pid == 0) {
        execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
        _exit(127);
      }
      REQUIRE(pid > 0);
      pids_.push_back(pid);
      status_.push_back(-2);  // running
    }
  }
  Ranks(const Ranks&) = delete;
  Ranks& operator=(const Ranks&) = delete;
  ~Ranks() {
    for (std::size_t i = 0; i < pids_.size(); ++i)
      if (status_[i] == -2) {
        ::kill(pids_[i], SIGKILL);
        ::waitpid(pids_[i], nullptr, 0);
      }
  }

  pid_t pid(int i) const { return pids_[std::size_t(i)]; }
  std::string log(int i) const { return test::read_file(logs_[std::size_t(i)]); }
  std::string logs() const {
    std::string all;
    for (std::size_t i = 0; i < logs_.size(); ++i) all += fmt::format("--- {}\n{}", logs_[i].filename().string(), log(int(i)));
    return all;
  }

  // Waits for every process, at most `limit`; one still running then is killed and counts -1.
  // Exit statuses by process (-1 for a signal).
  std::vector<int> wait(std::chrono::seconds limit) {
    const auto deadline = Clock::now() + limit;
    for (;;) {
      bool running = false;
      for (std::size_t i = 0; i < pids_.size(); ++i) {
        if (status_[i] != -2) continue;
        int status = 0;
        if (::waitpid(pids_[i], &status, WNOHANG) == pids_[i]) status_[i] = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        else running = true;
      }
      if (!running) return status_;
      if (Clock::now() > deadline) {
        for (std::size_t i = 0; i < pids_.size(); ++i)
          if (status_[i] == -2) {
            ::kill(pids_[i], SIGKILL);
            ::waitpid(pids_[i], nullptr, 0);
            status_[i] = -1;
          }
        return status_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // Every process succeeded within `limit`.
  void require_success(std::chrono::seconds limit = std::chrono::seconds(120)) {
    const auto statuses = wait(limit);
    INFO(logs());
    REQUIRE(statuses == std::vector<int>(statuses.size(), 0));
  }

 private:
  fs::path dir_;
  std::vector<pid_t> pids_;
  std::vector<int> status_;
  std::vector<fs::path> logs_;
};

std::vector<std::string> same_args(int n, const std::string& args) { return std::vector<std::string>(std::size_t(n), args); }

// Words in a fixed pseudo-random order: the --text-file of the runs.
fs::path write_text(const fs::path& file, int words) {
  const char* vocabulary[] = {"Once", "upon", "a", "time,", "there", "was", "little", "cat", "named", "Tom.", "He",
                              "liked", "to", "run", "in", "the", "park", "with", "his", "friend", "Ivy.", "One",
                              "day", "they", "found", "blue", "key", "near", "river."};
  std::mt19937 random(7);
  std::string text;
  for (int i = 0; i < words; ++i) text += std::string(vocabulary[random() % std::size(vocabulary)]) + " ";
  hooklens::write_text_file(file, text);
  return file;
}

fs::path toy_neo() { return fs::path(HOOKLENS_SOURCE_DIR) / "models" / "toy-neo"; }

// 12 sequences of three lengths: two prompts, then ten `seq_len`-token sequences of the text file.
std::string twelve_sequences(const fs::path& text, int seq_len = 24) {
  return fmt::format("capture --model '{}' --threads 1 --prompt 'Once upon a time, there was a little cat named Tom.' "
                     "--prompt 'Tom liked to run.' --text-file '{}' --seq-len {} --max-sequences 10 --hooks "
                     "'blocks.*.attn.hook_pattern,blocks.*.hook_resid_post,blocks.*.mlp.hook_post'",
                     toy_neo().string(), text.string(), seq_len);
}

// 300 sequences of `seq_len` tokens, one layer's residual stream each: work enough to kill a rank in.
std::string many_sequences(const fs::path& text, int seq_len = 128) {
  return fmt::format("capture --model '{}' --threads 1 --text-file '{}' --seq-len {} --max-sequences 300 --hooks "
                     "blocks.3.hook_resid_post",
                     toy_neo().string(), text.string(), seq_len);
}

// Two complete runs hold the same captures: the same keys, each with the same dtype, shape and bytes.
void require_same_captures(const fs::path& a, const fs::path& b) {
  hooklens::RunReader one(a), other(b);
  REQUIRE(one.capture_count() > 0);
  REQUIRE(one.capture_count() == other.capture_count());
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < other.capture_count(); ++i) index[other.entry(i).key] = i;
  REQUIRE(index.size() == other.capture_count());
  std::size_t identical = 0;
  for (std::size_t i = 0; i < one.capture_count(); ++i) {
    const auto& entry = one.entry(i);
    INFO(entry.key);
    REQUIRE(index.count(entry.key));
    const std::size_t j = index[entry.key];
    CHECK(other.entry(j).dtype == entry.dtype);
    CHECK(other.entry(j).shape == entry.shape);
    const at::Tensor x = one.load(i), y = other.load(j);
    if (x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type() && at::equal(x, y)) ++identical;
  }
  CHECK(identical == one.capture_count());
}

json manifest_of(const fs::path& run) { return hooklens::read_json_file(run / "manifest.json"); }

std::size_t parts_in(const fs::path& dir) {
  std::size_t n = 0;
  for (const auto& item : fs::directory_iterator(dir))
    if (item.path().filename().string().rfind("part-", 0) == 0) ++n;
  return n;
}

}  // namespace

TEST_CASE("split_by_tokens: contiguous shares balanced by tokens, the same on every rank", "[distributed]") {
  using hooklens::split_by_tokens;
  using Shares = std::vector<std::vector<std::size_t>>;
  CHECK(split_by_tokens({10, 10, 10, 10, 10, 10}, 3) == Shares{{0, 1}, {2, 3}, {4, 5}});
  // One long prompt weighs as much as several short ones.
  CHECK(split_by_tokens({90, 10, 10, 10, 10, 10, 10, 10, 10, 10}, 2) == Shares{{0}, {1, 2, 3, 4, 5, 6, 7, 8, 9}});
  CHECK(split_by_tokens({5, 5}, 4) == Shares{{}, {0}, {}, {1}});  // more ranks than prompts: some get none
  CHECK(split_by_tokens({}, 2) == Shares{{}, {}});
  CHECK(split_by_tokens({7}, 1) == Shares{{0}});
  // Every prompt exactly once, in order, whatever the lengths.
  std::mt19937 random(3);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<std::size_t> lengths(random() % 40);
    for (auto& n : lengths) n = 1 + random() % 300;
    const int ranks = 1 + int(random() % 7);
    const Shares shares = split_by_tokens(lengths, ranks);
    REQUIRE(shares.size() == std::size_t(ranks));
    std::vector<std::size_t> all;
    for (const auto& share : shares) all.insert(all.end(), share.begin(), share.end());
    std::vector<std::size_t> expected(lengths.size());
    std::iota(expected.begin(), expected.end(), std::size_t(0));
    CHECK(all == expected);
  }
  CHECK_THROWS_AS(split_by_tokens({1}, 0), hooklens::Error);
}

TEST_CASE("1 process and 3 processes over the same 12 sequences: identical captures and equal reports", "[distributed]") {
  test::TempDir tmp;
  const std::string args = twelve_sequences(write_text(tmp / "text.txt", 400)) +
                           " --analyze attention_stats,head_detectors,neurons,compare_prompts,token_influence";
  test::require_hooklens(fmt::format("{} --out '{}'", args, (tmp / "one").string()), tmp / "one.log");
  // --batch-size 2 on the ranks: batching inside a rank changes nothing either.
  Ranks ranks(tmp.path, 3, same_args(3, fmt::format("{} --batch-size 2 --out '{}'", args, (tmp / "three").string())),
              free_port());
  ranks.require_success();
  INFO(ranks.logs());
  require_same_captures(tmp / "one", tmp / "three");
  const json one = manifest_of(tmp / "one"), three = manifest_of(tmp / "three");
  CHECK(three["complete"] == true);
  CHECK(three["distributed"]["world_size"] == 3);
  CHECK(three["prompts"] == one["prompts"]);
  CHECK(three["prompts"].size() == 13);  // the 12 and head_detectors' repeated random tokens
  CHECK(three["capture"] == one["capture"]);
  // In prompt order, as one process writes them; each rank's shards carry its rank.
  std::vector<std::string> keys_one, keys_three;
  std::set<std::string> files;
  for (const auto& c : one["captures"]) keys_one.push_back(c["key"]);
  for (const auto& c : three["captures"]) keys_three.push_back(c["key"]), files.insert(c["file"].get<std::string>());
  CHECK(keys_three == keys_one);
  CHECK(files == std::set<std::string>{hooklens::rank_shard_name(0, 0), hooklens::rank_shard_name(1, 0),
                                       hooklens::rank_shard_name(2, 0)});
  CHECK(parts_in(tmp / "three") == 0);  // joined into manifest.json
  // Every report equals the single process's (sums within 1e-9 relative).
  int reports = 0;
  for (const auto& item : fs::directory_iterator(tmp / "one" / "reports")) {
    const fs::path theirs = tmp / "three" / "reports" / item.path().filename();
    INFO(theirs);
    REQUIRE(fs::exists(theirs));
    CHECK(test::report_difference(hooklens::read_json_file(item.path()), hooklens::read_json_file(theirs)) == "");
    ++reports;
  }
  CHECK(reports == 5);
  // Rank 0 printed the headline and the progress over all ranks; the others where the run is.
  CHECK(ranks.log(0).find("capture: 3 ranks: sequence 13/13") != std::string::npos);
  CHECK(ranks.log(0).find("report: ") != std::string::npos);
  CHECK(ranks.log(1).find("rank 0 completes the run") != std::string::npos);
}

TEST_CASE("A rank killed with -9 stops the run naming it; --resume completes it", "[distributed]") {
  test::TempDir tmp;
  const fs::path text = write_text(tmp / "text.txt", 40000);
  const std::string args = many_sequences(text);
  const fs::path run = tmp / "run";
  {
    Ranks ranks(tmp.path, 3, same_args(3, fmt::format("{} --timeout 5 --out '{}'", args, run.string())), free_port());
    // Rank 1 dies once it has begun writing.
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    const fs::path started = run / (hooklens::rank_shard_name(1, 0) + ".tmp");
    while (!fs::exists(started) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    INFO(ranks.logs());
    REQUIRE(fs::exists(started));
    REQUIRE(::kill(ranks.pid(1), SIGKILL) == 0);
    const auto killed = Clock::now();
    const std::vector<int> statuses = ranks.wait(std::chrono::seconds(60));
    const double seconds = std::chrono::duration<double>(Clock::now() - killed).count();
    INFO(ranks.logs());
    CHECK(statuses == std::vector<int>{1, -1, 1});
    CHECK(seconds < 5 + 15);  // --timeout, and a margin for a loaded machine
    for (int r : {0, 2}) {  // rank 2 may hear it from rank 0 first: "rank 0 failed: rank 1 stopped ..."
      const std::string log = ranks.log(r);
      CHECK(log.rfind("hooklens: error: ", 0) == 0);
      CHECK(log.find("rank 1 stopped: no sign of life for 5 s") != std::string::npos);
    }
  }
  const json failed = manifest_of(run);
  CHECK(failed["complete"] == false);
  CHECK(failed.value("error", "").find("rank 1") != std::string::npos);
  CHECK(test::error_of([&] { hooklens::RunReader reader(run); }).find("incomplete") != std::string::npos);

  // --resume of another run is refused; the same one completes, on 2 processes this time.
  CHECK(test::run_hooklens(fmt::format("{} --out '{}' --resume", many_sequences(text, 64), run.string()), tmp / "other.log",
                           "RANK=0 WORLD_SIZE=1") == 2);
  CHECK(test::read_file(tmp / "other.log").find("written by another run") != std::string::npos);
  Ranks resumed(tmp.path, 2, same_args(2, fmt::format("{} --timeout 30 --resume --out '{}'", args, run.string())),
                free_port());
  resumed.require_success();
  const std::string log = resumed.log(0);
  INFO(log);
  int kept = -1;
  const auto at = log.find("resume: ");
  REQUIRE(at != std::string::npos);
  REQUIRE(std::sscanf(log.c_str() + at, "resume: %d", &kept) == 1);
  CHECK(kept > 0);
  CHECK(kept < 300);
  CHECK(manifest_of(run)["complete"] == true);
  CHECK(manifest_of(run)["distributed"]["resumed"] == true);
  for (const auto& item : fs::directory_iterator(run)) {  // no part, no unfinished shard of the killed rank
    INFO(item.path());
    CHECK(!hooklens::ends_with(item.path().string(), ".tmp"));
    CHECK(item.path().filename().string().rfind("part-", 0) != 0);
  }
  test::require_hooklens(fmt::format("{} --out '{}'", args, (tmp / "one").string()), tmp / "one.log");
  require_same_captures(tmp / "one", run);
  // A complete run has nothing to resume.
  CHECK(test::run_hooklens(fmt::format("{} --out '{}' --resume", args, run.string()), tmp / "again.log",
                           "RANK=0 WORLD_SIZE=1") == 2);
  CHECK(test::read_file(tmp / "again.log").find("complete already") != std::string::npos);
}

TEST_CASE("--local-out parts joined by hooklens merge", "[distributed]") {
  test::TempDir tmp;
  const std::string args = twelve_sequences(write_text(tmp / "text.txt", 400));
  test::require_hooklens(fmt::format("{} --out '{}'", args, (tmp / "one").string()), tmp / "one.log");
  const fs::path parts = tmp / "parts";
  Ranks ranks(tmp.path, 2, same_args(2, fmt::format("{} --local-out --out '{}'", args, parts.string())), free_port());
  ranks.require_success();
  CHECK(ranks.log(0).find("hooklens merge") != std::string::npos);
  CHECK(!fs::exists(parts / "manifest.json"));  // no machine sees every part
  CHECK(parts_in(parts) == 2);
  // A machine's parts missing: refused, naming them.
  fs::create_directories(tmp / "half");
  fs::copy(parts, tmp / "half");
  fs::remove(tmp / "half" / hooklens::rank_part_name(1));
  CHECK(test::hooklens_refusal(fmt::format("merge '{}' --out '{}'", (tmp / "half").string(), (tmp / "bad").string()),
                               tmp / "half.log")
            .find("part-rank00001.json (rank 1 of 2) is in none of the directories") != std::string::npos);
  // Joined into a new directory: the single process's captures.
  test::require_hooklens(fmt::format("merge '{}' --out '{}'", parts.string(), (tmp / "joined").string()), tmp / "merge.log");
  require_same_captures(tmp / "one", tmp / "joined");
  CHECK(parts_in(parts) == 2);  // the inputs stay
  CHECK(test::hooklens_refusal(fmt::format("merge '{}' --out '{}'", parts.string(), (tmp / "joined").string()),
                               tmp / "again.log")
            .find("exists and is not empty") != std::string::npos);
  // A prompt in two parts (the same part given twice) is refused.
  CHECK(test::hooklens_refusal(fmt::format("merge '{}' '{}' --out '{}'", parts.string(), parts.string(),
                                           (tmp / "twice").string()),
                               tmp / "twice.log")
            .find("two parts of rank 0") != std::string::npos);
}

TEST_CASE("Runs over several processes refuse what they cannot do, in one line", "[distributed]") {
  test::TempDir tmp;
  const fs::path text = write_text(tmp / "text.txt", 400);
  const std::string args = twelve_sequences(text);
  const auto usage = [&](const std::string& more, const std::string& env) {
    const int status = test::run_hooklens(more, tmp / "usage.log", env);
    const std::string text = test::read_file(tmp / "usage.log");
    INFO(more << "\n" << text);
    CHECK(status == 2);
    return text;
  };
  CHECK(usage(args + " --out x", "RANK=0").find("RANK is set but WORLD_SIZE is not") != std::string::npos);
  CHECK(usage(args + " --out x", "RANK=2 WORLD_SIZE=2").find("RANK=2 is not below WORLD_SIZE=2") != std::string::npos);
  CHECK(usage(args + " --out x", "RANK=0 WORLD_SIZE=2 MASTER_PORT=http").find("MASTER_PORT='http'") != std::string::npos);
  CHECK(usage(args, "RANK=0 WORLD_SIZE=1").find("needs --out DIR") != std::string::npos);
  CHECK(usage(args + " --local-out --out x", "").find("--local-out is for runs over several processes") != std::string::npos);
  fs::create_directories(tmp / "empty");
  CHECK(usage(fmt::format("{} --resume --out '{}'", args, (tmp / "empty").string()), "").find("holds no part") !=
        std::string::npos);
  CHECK(fs::is_empty(tmp / "empty"));  // a refused --resume writes nothing
  CHECK(usage(fmt::format("generate --model '{}' --prompt hi --out x", toy_neo().string()), "RANK=0 WORLD_SIZE=1")
            .find("only `hooklens capture` runs over several processes") != std::string::npos);

  // A rank that never comes: rank 0 stops within --timeout, naming it.
  {
    Ranks alone(tmp.path, 2, {fmt::format("{} --timeout 2 --out '{}'", args, (tmp / "alone").string())}, free_port());
    const auto started = Clock::now();
    const auto statuses = alone.wait(std::chrono::seconds(60));
    INFO(alone.logs());
    CHECK(statuses == std::vector<int>{1});
    CHECK(std::chrono::duration<double>(Clock::now() - started).count() < 2 + 15);
    CHECK(alone.log(0).find("rank 1 did not join within 2 s") != std::string::npos);
  }
  // Ranks given different sequences: refused before anything is written.
  {
    Ranks differ(tmp.path, 2,
                 {fmt::format("{} --out '{}'", args, (tmp / "differ").string()),
                  fmt::format("{} --out '{}'", twelve_sequences(text, 23), (tmp / "differ").string())},
                 free_port());
    const auto statuses = differ.wait(std::chrono::seconds(60));
    INFO(differ.logs());
    CHECK(statuses == std::vector<int>{1, 1});
    CHECK(differ.log(0).find("rank 1 runs other prompts, options or model than rank 0") != std::string::npos);
    CHECK(!fs::exists(tmp / "differ" / "manifest.json"));
  }
  // --out that one rank does not see (not shared storage): the run stops, saying what --out must be.
  // Both fail; the logs of ranks 0 and 1.
  const auto apart = [&](const fs::path& mine, const fs::path& theirs) {
    Ranks ranks(tmp.path, 2,
                {fmt::format("{} --out '{}'", args, mine.string()), fmt::format("{} --out '{}'", args, theirs.string())},
                free_port());
    const auto statuses = ranks.wait(std::chrono::seconds(60));
    INFO(ranks.logs());
    CHECK(statuses == std::vector<int>{1, 1});
    CHECK(manifest_of(mine)["complete"] == false);
    return std::make_pair(ranks.log(0), ranks.log(1));
  };
  {
    const auto [rank0, rank1] = apart(tmp / "here", tmp / "there");  // rank 1's directory does not exist
    INFO(rank0);
    CHECK(rank0.find("rank 1 failed: ") != std::string::npos);
    CHECK(rank0.find("--out must be on storage every rank shares") != std::string::npos);
  }
  {
    // Where rank 1's directory exists, it writes its part there, and rank 0 does not find it.
    fs::create_directories(tmp / "elsewhere");
    const auto [rank0, rank1] = apart(tmp / "mine", tmp / "elsewhere");
    INFO(rank0 << rank1);
    CHECK(rank0.find("rank 1's part part-rank00001.json is not there: every rank needs --out on storage they "
                     "all share") != std::string::npos);
    CHECK(rank1.find("rank 0 could not complete the run") != std::string::npos);
  }
}

TEST_CASE("read_run_parts and join_run_parts refuse damaged parts in one line", "[distributed]") {
  test::TempDir tmp;
  const auto refusal = [&](const std::string& part) {
    const fs::path dir = tmp / fmt::format("d{}", std::hash<std::string>()(part));
    fs::create_directories(dir);
    hooklens::write_text_file(dir / "part-rank00000.json", part);
    return test::error_of([&] { hooklens::join_run_parts({dir}, dir); });
  };
  CHECK(refusal("[").find("part-rank00000.json") != std::string::npos);
  CHECK(refusal("{}").find("not a part of a hooklens run") != std::string::npos);
  CHECK(refusal(R"({"format": "hooklens-run", "complete": 1})").find("\"complete\" is not true or false") != std::string::npos);
  CHECK(refusal(R"({"format": "hooklens-run", "complete": true, "part": {"rank": 3, "prompts_done": []}})")
            .find("does not say rank 0") != std::string::npos);
  CHECK(refusal(R"({"format": "hooklens-run", "complete": true, "part": {"rank": 0, "prompts_done": [-1]}})")
            .find("not a prompt index") != std::string::npos);
  CHECK(refusal(R"({"format": "hooklens-run", "complete": false, "part": {"rank": 0, "prompts_done": []}})")
            .find("rank 0 did not finish") != std::string::npos);
  CHECK(refusal(R"({"format": "hooklens-run", "complete": true, "part": {"rank": 0, "prompts_done": [0]}, "prompts": []})")
            .find("prompt 0 is done, but the run has 0 prompts") != std::string::npos);
  CHECK(refusal(R"({"format": "hooklens-run", "complete": true, "part": {"rank": 0, "prompts_done": []},
                    "prompts": [{"ids": [1], "tokens": ["a"]}]})")
            .find("prompt 0 was captured by none of the parts") != std::string::npos);
  CHECK(refusal(R"({"format": "hooklens-run", "complete": true, "part": {"rank": 0, "prompts_done": [0]},
                    "prompts": [{"ids": [1], "tokens": ["a"]}],
                    "captures": [{"key": "k", "hook": "h", "file": "captures-rank00000-00000.safetensors", "dtype": "F32",
                                  "shape": [1], "prompt": 0, "phase": "prefill", "step": 0}]})")
            .find("capture 'k'") != std::string::npos);
}
