// Runs over several processes and machines (docs/distributed.md), launched like torchrun: every
// process gets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and LOCAL_RANK) and the same arguments.
// Rendezvous and liveness go through c10d's TCPStore, served by rank 0; collectives through c10d's
// ProcessGroupGloo. No libtorch here: distributed.cpp is the one translation unit that sees c10d.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hooklens {

// The launcher's variables.
struct DistributedEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;

  // nullopt when neither RANK nor WORLD_SIZE is set (a plain single process). UsageError, one
  // line, for one without the other or a value out of range; MASTER_ADDR defaults to 127.0.0.1,
  // MASTER_PORT to 29500 and LOCAL_RANK to RANK, as torchrun's do.
  static std::optional<DistributedEnv> from_environment();
};

// What a rank has done of its share, published for rank 0's progress line.
struct RankProgress {
  std::int64_t sequences = 0, tokens = 0;
};

// Every process of a run. A rank that fails calls fail() (the others stop at once, naming it); a
// rank that dies is noticed by its silence: each rank beats every second or so, and a rank silent
// for the timeout is declared gone. Error messages name the rank at fault.
class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Every rank calls it in the same order; returns every rank's bytes, by rank. Waits for slower
  // ranks as long as they beat (a long model load or a larger share is not a fault).
  virtual std::vector<std::string> all_gather(const std::string& bytes) = 0;
  void barrier() { all_gather({}); }
  // Between units of work: Error when another rank failed or has been silent for the timeout, so
  // that a rank with work left stops too instead of finding out at the end. Cheap: it looks at
  // most about once a second.
  virtual void check_peers() = 0;
  // This rank's progress (cheap: read by the heartbeat), and rank 0's view of every rank's.
  virtual void set_progress(const RankProgress& progress) = 0;
  virtual std::vector<RankProgress> progress() = 0;
  // Tells the other ranks this one stopped, and why. Never throws.
  virtual void fail(const std::string& why) noexcept = 0;
};

// Joins the group of `env`: rank 0 serves the store at MASTER_ADDR:MASTER_PORT, the others connect
// to it. Error when a rank does not join within `timeout`, or the store cannot be reached or served.
std::unique_ptr<ProcessGroup> join_process_group(const DistributedEnv& env, std::chrono::milliseconds timeout);
// A group of one process, without sockets (a one-rank run needs no rendezvous).
std::unique_ptr<ProcessGroup> single_process_group();

// Which prompts each of `ranks` ranks captures: contiguous runs of prompts, balanced by tokens
// (rank r takes the prompts whose middle falls in the r-th of `ranks` equal slices of all the
// tokens; a rank may get none). Deterministic, so every rank computes the same split.
std::vector<std::vector<std::size_t>> split_by_tokens(const std::vector<std::size_t>& prompt_tokens, int ranks);

}  // namespace hooklens
