// The process group of a run over several processes: c10d's TCPStore (rendezvous, heartbeats,
// failures) and ProcessGroupGloo (the collectives). The one translation unit that includes c10d.
#include <hooklens/distributed.h>
#include <hooklens/error.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

namespace hooklens {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::optional<long long> env_integer(const char* name, long long lo, long long hi) {
  const char* text = std::getenv(name);
  if (!text) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (!*text || *end || errno || value < lo || value > hi)
    throw UsageError(fmt::format("{}='{}': expected an integer in [{}, {}]", name, text, lo, hi));
  return value;
}

std::string text_of(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

std::string bytes_text(const std::vector<std::uint8_t>& bytes) { return std::string(bytes.begin(), bytes.end()); }
std::vector<std::uint8_t> text_bytes(const std::string& text) { return {text.begin(), text.end()}; }

// Store keys. Every rank writes only its own; rank 0's server holds them all.
std::string key(const char* what, int rank) { return fmt::format("hooklens/{}/{}", what, rank); }
constexpr const char* kFailures = "hooklens/failures";  // how many ranks called fail()

c10::intrusive_ptr<c10d::TCPStore> connect_store(const DistributedEnv& env, bool server, milliseconds timeout) {
  c10d::TCPStoreOptions options;
  options.port = std::uint16_t(env.master_port);
  options.isServer = server;
  options.numWorkers = std::size_t(env.world_size);
  options.waitWorkers = false;  // our own deadline names the ranks that did not come
  options.timeout = timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  } catch (const std::exception& e) {
    if (server)
      throw Error(fmt::format("rank 0 cannot serve the rendezvous store on port {} (MASTER_PORT in use?): {}",
                              env.master_port, text_of(e)));
    throw Error(fmt::format("rank {} cannot reach rank 0's rendezvous store at {}:{} within {} s: {}", env.rank,
                            env.master_addr, env.master_port, timeout.count() / 1000, text_of(e)));
  }
}

// The Gloo transport device: GLOO_SOCKET_IFNAME's interface when set (as for torch), the loopback
// device for a run on one machine, else the interface of this machine's host name.
std::shared_ptr<gloo::transport::Device> gloo_device(const DistributedEnv& env) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  if (env.master_addr == "localhost" || env.master_addr.rfind("127.", 0) == 0)
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

class C10dGroup final : public ProcessGroup {
 public:
  C10dGroup(const DistributedEnv& env, milliseconds timeout) : env_(env), timeout_(timeout) {
    beat_period_ = std::clamp(milliseconds(timeout.count() / 5), milliseconds(50), milliseconds(1000));
    store_ = connect_store(env, env.rank == 0, timeout);
    try {
      if (store_->add(key("claimed", env.rank), 1) != 1)
        throw Error(fmt::format("two processes were started as rank {} (each needs its own RANK)", env.rank));
      heartbeat_ = std::thread([this] { beat(); });
      store_->set(key("joined", env.rank), text_bytes(std::to_string(env.world_size)));
    } catch (const Error&) {
      stop_heartbeat();
      throw;
    } catch (const std::exception& e) {
      stop_heartbeat();
      throw lost_store(e);
    }
    try {
      wait_for("joined", true);
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices.push_back(gloo_device(env));
      gloo_ = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store_),
                                                          env.rank, env.world_size, options);
    } catch (const Error&) {
      stop_heartbeat();
      throw;
    } catch (const std::exception& e) {
      stop_heartbeat();
      throw Error(fmt::format("rank {}: cannot connect the process group: {}", env.rank, text_of(e)));
    }
  }

  ~C10dGroup() override {
    if (env_.rank == 0 && failed_) linger();
    stop_heartbeat();
  }

  int rank() const override { return env_.rank; }
  int size() const override { return env_.world_size; }

  std::vector<std::string> all_gather(const std::string& bytes) override {
    const std::string tag = fmt::format("sync{}", collectives_++);
    wait_for(tag.c_str(), false);
    try {
      std::vector<at::Tensor> length{at::full({1}, std::int64_t(bytes.size()), at::kLong)};
      std::vector<std::vector<at::Tensor>> lengths(1);
      for (int r = 0; r < size(); ++r) lengths[0].push_back(at::empty({1}, at::kLong));
      gloo_->allgather(lengths, length)->wait();
      std::int64_t longest = 0;
      for (const auto& t : lengths[0]) longest = std::max(longest, t.item<std::int64_t>());
      std::vector<std::string> out(static_cast<std::size_t>(size()));
      if (longest == 0) return out;
      std::vector<at::Tensor> mine{at::zeros({longest}, at::kByte)};
      std::copy(bytes.begin(), bytes.end(), mine[0].data_ptr<std::uint8_t>());
      std::vector<std::vector<at::Tensor>> all(1);
      for (int r = 0; r < size(); ++r) all[0].push_back(at::empty({longest}, at::kByte));
      gloo_->allgather(all, mine)->wait();
      for (int r = 0; r < size(); ++r) {
        const auto* data = all[0][std::size_t(r)].data_ptr<std::uint8_t>();
        out[std::size_t(r)].assign(reinterpret_cast<const char*>(data), std::size_t(lengths[0][std::size_t(r)].item<std::int64_t>()));
      }
      return out;
    } catch (const std::exception& e) {
      throw diagnose(fmt::format("a collective failed: {}", text_of(e)));
    }
  }

  void check_peers() override {
    if (Clock::now() - last_check_ < beat_period_) return;
    last_check_ = Clock::now();
    try {
      check_failures();
      const std::vector<int> silent = silent_ranks(timeout_);
      if (!silent.empty()) throw gone(silent, false);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw lost_store(e);
    }
  }

  void set_progress(const RankProgress& progress) override {
    sequences_ = progress.sequences;
    tokens_ = progress.tokens;
  }

  std::vector<RankProgress> progress() override {
    std::vector<RankProgress> out(static_cast<std::size_t>(size()));
    for (int r = 0; r < size(); ++r) {
      if (r == rank()) {
        out[std::size_t(r)] = {sequences_, tokens_};
        continue;
      }
      try {
        if (!store_->check({key("beat", r)})) continue;
        std::istringstream in(bytes_text(store_->get(key("beat", r))));
        std::int64_t count = 0;
        in >> count >> out[std::size_t(r)].sequences >> out[std::size_t(r)].tokens;
      } catch (const std::exception&) {
        // progress is only shown; a lost store is reported by the next collective
      }
    }
    return out;
  }

  void fail(const std::string& why) noexcept override {
    failed_ = true;
    try {
      store_->set(key("failed", rank()), text_bytes(why));
      store_->add(kFailures, 1);
    } catch (...) {
      // the store is gone: the others notice that on their own
    }
  }

 private:
  // The heartbeat, on its own connection to the store (a TCPStore client is one socket, used by
  // one thread at a time): a counter and this rank's progress, every beat_period_.
  void beat() noexcept {
    c10::intrusive_ptr<c10d::TCPStore> store;
    try {
      store = connect_store(env_, false, timeout_);
      std::unique_lock<std::mutex> lock(beat_mutex_);
      for (std::int64_t count = 0; !stopping_; ++count) {
        const std::string value = fmt::format("{} {} {}", count, sequences_.load(), tokens_.load());
        lock.unlock();
        store->set(key("beat", env_.rank), text_bytes(value));
        lock.lock();
        beat_wake_.wait_for(lock, beat_period_, [&] { return stopping_; });
      }
    } catch (...) {
      // rank 0's store is gone; the main thread finds out at its next use of the store
    }
  }

  void stop_heartbeat() {
    {
      std::lock_guard<std::mutex> lock(beat_mutex_);
      stopping_ = true;
    }
    beat_wake_.notify_all();
    if (heartbeat_.joinable()) heartbeat_.join();
  }

  // Rank 0 serves the store: after it failed it stays until every other rank still alive has
  // failed too (they read why from the store), so they report the cause, not a lost store.
  void linger() noexcept {
    try {
      const auto deadline = Clock::now() + std::min(timeout_, milliseconds(10000));
      while (Clock::now() < deadline) {
        const std::vector<int> silent = silent_ranks(3 * beat_period_);
        bool waiting = false;
        for (int r = 1; r < size() && !waiting; ++r)
          waiting = !store_->check({key("failed", r)}) && std::find(silent.begin(), silent.end(), r) == silent.end();
        if (!waiting) return;
        std::this_thread::sleep_for(milliseconds(20));
      }
    } catch (...) {
      // nothing more to do for the others
    }
  }

  Error lost_store(const std::exception& e) const {
    return Error(env_.rank == 0 ? fmt::format("rank 0: the rendezvous store failed: {}", text_of(e))
                                : fmt::format("rank {} lost rank 0's rendezvous store at {}:{} (rank 0 stopped, or its "
                                              "machine is unreachable): {}",
                                              env_.rank, env_.master_addr, env_.master_port, text_of(e)));
  }

  // Throws the first failure another rank announced.
  void check_failures() {
    if (store_->add(kFailures, 0) == 0) return;
    for (int r = 0; r < size(); ++r)
      if (r != rank() && store_->check({key("failed", r)}))
        throw Error(fmt::format("rank {} failed: {}", r, bytes_text(store_->get(key("failed", r)))));
  }

  // Ranks whose heartbeat has not changed for `silence`.
  std::vector<int> silent_ranks(milliseconds silence) {
    std::vector<int> silent;
    const auto now = Clock::now();
    for (int r = 0; r < size(); ++r) {
      if (r == rank()) continue;
      std::string value;
      if (store_->check({key("beat", r)})) value = bytes_text(store_->get(key("beat", r)));
      auto [it, first] = beats_.try_emplace(r, Beat{value, now});
      if (!first && it->second.value != value) it->second = {value, now};
      if (now - it->second.changed >= silence) silent.push_back(r);
    }
    return silent;
  }

  // Ranks that stopped beating for the timeout, or (`joining`) never joined within it.
  Error gone(const std::vector<int>& ranks, bool joining) const {
    const std::string who = fmt::format("rank{} {}", ranks.size() > 1 ? "s" : "", fmt::join(ranks, ", "));
    const long long seconds = timeout_.count() / 1000;
    return Error(joining ? fmt::format("{} did not join within {} s", who, seconds)
                         : fmt::format("{} stopped: no sign of life for {} s (killed, or its machine is unreachable)", who,
                                       seconds));
  }

  // Marks this rank at `tag` and waits until every rank is, as long as the others are alive;
  // `joining`: the rendezvous, where a rank absent for the timeout has not joined.
  void wait_for(const char* tag, bool joining) {
    const auto started = Clock::now();
    try {
      store_->set(key(tag, rank()), text_bytes("1"));
      for (milliseconds pause(1);; pause = std::min(pause * 2, milliseconds(20))) {
        check_failures();
        std::vector<int> missing;
        for (int r = 0; r < size(); ++r)
          if (r != rank() && !store_->check({key(tag, r)})) missing.push_back(r);
        if (missing.empty()) return;
        const std::vector<int> silent = silent_ranks(timeout_);
        std::vector<int> absent;
        for (int r : missing)
          if (std::count(silent.begin(), silent.end(), r) || (joining && Clock::now() - started >= timeout_))
            absent.push_back(r);
        if (!absent.empty()) throw gone(absent, joining);
        std::this_thread::sleep_for(pause);
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw lost_store(e);
    }
  }

  // After a failed collective: a rank that announced its failure, or went silent, is the cause.
  Error diagnose(const std::string& what) {
    try {
      check_failures();
      std::this_thread::sleep_for(3 * beat_period_);
      check_failures();
      const std::vector<int> silent = silent_ranks(3 * beat_period_);
      if (!silent.empty())
        return Error(fmt::format("rank{} {} stopped during a collective ({})", silent.size() > 1 ? "s" : "",
                                 fmt::join(silent, ", "), what));
      return Error(fmt::format("rank {}: {}", rank(), what));
    } catch (const Error& e) {
      return e;
    } catch (const std::exception& e) {
      return lost_store(e);
    }
  }

  struct Beat {
    std::string value;
    Clock::time_point changed;
  };

  DistributedEnv env_;
  milliseconds timeout_, beat_period_{1000};
  c10::intrusive_ptr<c10d::TCPStore> store_;  // the main thread's connection
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_;
  std::map<int, Beat> beats_;
  Clock::time_point last_check_ = Clock::now();
  int collectives_ = 0;
  std::atomic<std::int64_t> sequences_{0}, tokens_{0};
  std::thread heartbeat_;
  std::mutex beat_mutex_;
  std::condition_variable beat_wake_;
  bool stopping_ = false;
  bool failed_ = false;
};

class SingleProcess final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::vector<std::string> all_gather(const std::string& bytes) override { return {bytes}; }
  void check_peers() override {}
  void set_progress(const RankProgress& progress) override { progress_ = progress; }
  std::vector<RankProgress> progress() override { return {progress_}; }
  void fail(const std::string&) noexcept override {}

 private:
  RankProgress progress_;
};

}  // namespace

std::optional<DistributedEnv> DistributedEnv::from_environment() {
  constexpr long long kMaxRanks = 1 << 16;
  const auto rank = env_integer("RANK", 0, kMaxRanks - 1);
  const auto world = env_integer("WORLD_SIZE", 1, kMaxRanks);
  if (!rank && !world) return std::nullopt;
  if (!rank || !world)
    throw UsageError(fmt::format("{} is set but {} is not: a run over several processes needs both (scripts/launch.sh "
                                 "sets them)",
                                 rank ? "RANK" : "WORLD_SIZE", rank ? "WORLD_SIZE" : "RANK"));
  if (*rank >= *world) throw UsageError(fmt::format("RANK={} is not below WORLD_SIZE={}", *rank, *world));
  DistributedEnv env;
  env.rank = int(*rank);
  env.world_size = int(*world);
  env.local_rank = int(env_integer("LOCAL_RANK", 0, kMaxRanks - 1).value_or(*rank));
  if (const char* addr = std::getenv("MASTER_ADDR"); addr && *addr) env.master_addr = addr;
  env.master_port = int(env_integer("MASTER_PORT", 1, 65535).value_or(env.master_port));
  return env;
}

std::unique_ptr<ProcessGroup> join_process_group(const DistributedEnv& env, std::chrono::milliseconds timeout) {
  if (env.world_size == 1) return single_process_group();
  return std::make_unique<C10dGroup>(env, timeout);
}

std::unique_ptr<ProcessGroup> single_process_group() { return std::make_unique<SingleProcess>(); }

std::vector<std::vector<std::size_t>> split_by_tokens(const std::vector<std::size_t>& prompt_tokens, int ranks) {
  if (ranks < 1) throw Error(fmt::format("split_by_tokens: {} ranks", ranks));
  std::vector<std::vector<std::size_t>> shares(static_cast<std::size_t>(ranks));
  unsigned __int128 total = 0;
  for (auto n : prompt_tokens) total += n;
  unsigned __int128 start = 0;
  for (std::size_t i = 0; i < prompt_tokens.size(); ++i) {
    // The rank whose slice holds the prompt's middle: floor((start + n/2) * ranks / total).
    const unsigned __int128 twice_middle = 2 * start + prompt_tokens[i];
    const std::size_t r = total ? std::size_t(std::min<unsigned __int128>(twice_middle * unsigned(ranks) / (2 * total),
                                                                          unsigned(ranks - 1)))
                                : 0;
    shares[r].push_back(i);
    start += prompt_tokens[i];
  }
  return shares;
}

}  // namespace hooklens
