// The run-directory writer: a capture sink that writes manifest.json and captures-NNNNN.safetensors
// shards (docs/run-format.md; entries encoded by hooklens/run_format.h).
//
// capture() only queues a reference to the tensor (adapters never modify a fired tensor), so the
// model's thread waits on the disk only when `queue_bytes` of tensors are already waiting. One
// background thread converts each tensor (CPU, contiguous, F16 if asked) and streams its bytes to
// the open shard, `<shard>.tmp`, behind room left for the safetensors header; at shard close the
// header is written into that room (padded with spaces, as the format allows), the file synced
// and renamed into place, so the data is written once. Only when the header outgrew its room, or
// the padding would be a large part of a small shard, is the shard assembled into a second file.
// Tensor memory therefore stays below queue_bytes plus one converted tensor, whatever the length
// of the run and shard_bytes (a tensor larger than queue_bytes is let through alone). The queue
// counts each tensor's own bytes: a fired view keeps its whole base storage alive, which adapters
// should avoid.
//
// manifest.json is always replaced atomically (write .tmp, fsync, rename). It says
// "complete": false from open() on, is rewritten after every closed shard (so a crashed run still
// lists what reached the disk), and says "complete": true only after finish() wrote everything.
#include <hooklens/error.h>
#include <hooklens/hooks.h>
#include <hooklens/json_read.h>
#include <hooklens/plugin_define.h>
#include <hooklens/run_format.h>
#include <hooklens/sink.h>
#include <hooklens/text.h>
#include <hooklens/weights.h>

#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <malloc.h>  // malloc_trim
#include <sys/file.h>  // flock
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_set>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the run writer writes tensor bytes as they are in memory; safetensors is little-endian"
#endif

namespace fs = std::filesystem;
using nlohmann::json;

namespace hooklens {
namespace {

constexpr std::uint64_t kDefaultQueueBytes = 256ull << 20;
constexpr std::uint64_t kDefaultShardBytes = 256ull << 20;
// Room for a shard's header: 64 KiB hold ~450 captures' entries.
constexpr std::uint64_t kInitialHeaderRoom = 64ull << 10;

struct WriterOptions {
  fs::path out;
  bool f16 = false;
  std::uint64_t queue_bytes = kDefaultQueueBytes;
  std::uint64_t shard_bytes = kDefaultShardBytes;
  bool overwrite = false;
  // A run over several processes (docs/distributed.md): this rank's shards and part of the manifest.
  std::optional<int> rank;
  bool prepare = true;  // else the directory exists already (rank 0 prepared it)
  bool resume = false;  // prepare without removing what a failed run left
};

std::uint64_t positive_bytes(const json& options, const char* name, std::uint64_t fallback) {
  if (!options.contains(name)) return fallback;
  const json& value = options[name];
  if (!value.is_number_integer() || value.get<std::int64_t>() <= 0)
    throw UsageError(fmt::format("run writer: option '{}' must be a positive integer (bytes), got {}", name, value.dump()));
  return value.get<std::uint64_t>();
}

WriterOptions parse_options(const json& options) {
  if (!options.is_object()) throw UsageError("run writer: options must be a JSON object");
  for (const auto& [key, value] : options.items())
    if (key != "out" && key != "dtype" && key != "queue_bytes" && key != "shard_bytes" && key != "overwrite" &&
        key != "rank" && key != "prepare" && key != "resume")
      throw UsageError(fmt::format("run writer: unknown option '{}' (known: out, dtype, queue_bytes, shard_bytes, "
                                   "overwrite, rank, prepare, resume)",
                                   key));
  WriterOptions parsed;
  if (!options.contains("out") || !options["out"].is_string() || options["out"].get<std::string>().empty())
    throw UsageError("run writer: option 'out' (the run directory) is required");
  parsed.out = options["out"].get<std::string>();
  const std::string dtype = options.value("dtype", "F32");
  if (dtype != "F32" && dtype != "F16")
    throw UsageError(fmt::format("run writer: option 'dtype' must be \"F32\" or \"F16\", got \"{}\"", dtype));
  parsed.f16 = dtype == "F16";
  parsed.queue_bytes = positive_bytes(options, "queue_bytes", kDefaultQueueBytes);
  parsed.shard_bytes = positive_bytes(options, "shard_bytes", kDefaultShardBytes);
  if (options.contains("overwrite") && !options["overwrite"].is_boolean())
    throw UsageError("run writer: option 'overwrite' must be true or false");
  parsed.overwrite = options.value("overwrite", false);
  if (options.contains("rank")) {
    const json& rank = options["rank"];
    if (!rank.is_number_integer() || rank.get<std::int64_t>() < 0 || rank.get<std::int64_t>() > kMaxRunRank)
      throw UsageError(fmt::format("run writer: option 'rank' must be an integer in [0, {}]", kMaxRunRank));
    parsed.rank = rank.get<int>();
  }
  for (const char* flag : {"prepare", "resume"})
    if (options.contains(flag) && !options[flag].is_boolean())
      throw UsageError(fmt::format("run writer: option '{}' must be true or false", flag));
  parsed.prepare = options.value("prepare", true);
  parsed.resume = options.value("resume", false);
  if ((!parsed.prepare || parsed.resume) && !parsed.rank)
    throw UsageError("run writer: options 'prepare' and 'resume' are for a rank's part of a run (option 'rank')");
  return parsed;
}

[[noreturn]] void throw_io(const fs::path& file, const char* what) {
  throw Error(fmt::format("{}: {}: {}", file.string(), what, std::strerror(errno)));
}

// Data must be on disk before the file is renamed into place, or a crash could leave a complete
// looking name over an empty file.
void flush_and_close(std::FILE* f, const fs::path& file) {
  if (std::fflush(f) != 0 || ::fsync(fileno(f)) != 0) {
    const int saved = errno;
    std::fclose(f);
    errno = saved;
    throw_io(file, "cannot write");
  }
  if (std::fclose(f) != 0) throw_io(file, "cannot write");
}

bool looks_like_run_dir(const fs::path& dir) {
  try {
    const json manifest = read_json_file(dir / "manifest.json");
    return manifest.is_object() && manifest.value("format", "") == kRunFormatName;
  } catch (const Error&) {  // missing, unreadable, malformed or too deep: not a run to replace
    return false;
  }
}

// Ownership of a run directory: an flock on `<out>/.hooklens-writer.lock` (holding the owner's
// pid), held from before anything in the directory is deleted or written until the run is
// finished or aborted. A second writer of the same directory, with or without overwrite, is
// refused instead of deleting or mixing into a run being written. The kernel drops the lock when
// its process dies (kill -9 too), so a file left by a crash never blocks the next run. The file is
// removed on release; a writer that locked a file just removed retries on the new one.
class DirectoryLock {
 public:
  static constexpr const char* kName = ".hooklens-writer.lock";

  DirectoryLock() = default;
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock() { release(); }

  bool held() const { return fd_ >= 0; }

  // `name`: kName for the run directory, or a rank's own lock file (open_part).
  void acquire(const fs::path& dir, const std::string& name = kName) {
    if (held()) return;
    const fs::path path = dir / name;
    for (int attempt = 0;; ++attempt) {
      const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0) throw_io(path, "cannot create the run directory's lock file");
      if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int saved = errno;
        if (saved == EWOULDBLOCK) {
          const std::string owner = owner_of(fd);
          ::close(fd);
          throw Error(fmt::format("{}: is being written by another process{}; choose another directory, or wait for "
                                  "that run to end",
                                  dir.string(), owner));
        }
        ::close(fd);
        errno = saved;
        throw_io(path, "cannot lock the run directory");
      }
      struct stat locked {}, named {};
      if (::fstat(fd, &locked) == 0 && ::stat(path.c_str(), &named) == 0 && locked.st_dev == named.st_dev &&
          locked.st_ino == named.st_ino) {
        fd_ = fd;
        path_ = path;
        break;
      }
      ::close(fd);  // its owner removed it as we took it: lock the file now at that name
      if (attempt == 100) throw Error(fmt::format("{}: cannot lock the run directory (its lock file keeps changing)",
                                                  dir.string()));
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
      // the pid only makes the message of a refused writer better; the lock itself is held
    }
  }

  // Removes the file while still holding the lock, then lets go.
  void release() noexcept {
    if (!held()) return;
    ::unlink(path_.c_str());
    ::close(fd_);
    fd_ = -1;
  }

 private:
  static std::string owner_of(int fd) {
    char text[32] = {};
    const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
    if (n <= 0) return "";
    char* end = nullptr;
    const long pid = std::strtol(text, &end, 10);
    return pid > 0 && end != text ? fmt::format(" (pid {})", pid) : "";
  }

  int fd_ = -1;
  fs::path path_;
};

// What a directory holds besides the lock file.
bool holds_more_than_lock(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename() != DirectoryLock::kName) return true;
  if (ec) throw Error(fmt::format("{}: cannot list the run directory: {}", dir.string(), ec.message()));
  return false;
}

// Refuses to clobber anything that is not an empty directory or a previous run, and to touch a
// directory another writer owns. Checked once before the lock is taken, so that nothing (not even
// a lock file) is left in a directory that is refused, and again under the lock, which is taken
// before anything is deleted.
void prepare_directory(const WriterOptions& options, DirectoryLock& lock) {
  const fs::path& out = options.out;
  std::error_code ec;
  if (options.resume) {  // what the failed run wrote stays: the session keeps what it verified
    if (!fs::is_directory(out, ec)) throw Error(fmt::format("{}: no run directory to resume", out.string()));
    return lock.acquire(out);
  }
  auto check_replaceable = [&] {
    if (!holds_more_than_lock(out)) return false;
    if (!options.overwrite)
      throw Error(fmt::format("{}: directory exists and is not empty (choose another one, or set overwrite)", out.string()));
    if (!looks_like_run_dir(out))
      throw Error(fmt::format("{}: refusing to overwrite: not a hooklens run directory (no hooklens manifest.json)",
                              out.string()));
    return true;
  };
  if (fs::exists(out, ec)) {
    if (!fs::is_directory(out, ec)) throw Error(fmt::format("{}: exists and is not a directory", out.string()));
    // A writer at work is the first thing to report, whatever else the directory holds.
    if (fs::exists(out / DirectoryLock::kName, ec)) lock.acquire(out);
    check_replaceable();
  }
  fs::create_directories(out, ec);
  if (ec) throw Error(fmt::format("{}: cannot create the run directory: {}", out.string(), ec.message()));
  lock.acquire(out);
  if (!check_replaceable()) return;  // another writer may have finished a run here meanwhile
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() == DirectoryLock::kName) continue;
    std::error_code removed;
    fs::remove_all(it->path(), removed);
    if (removed) throw Error(fmt::format("{}: cannot remove the previous run: {}", out.string(), removed.message()));
  }
  if (ec) throw Error(fmt::format("{}: cannot remove the previous run: {}", out.string(), ec.message()));
}

std::string capture_key(std::string_view hook, const CaptureContext& ctx) {
  std::string key = fmt::format("p{}.s{}", ctx.prompt, ctx.step);
  if (ctx.block >= 0) key += fmt::format(".b{}", ctx.block);
  key += fmt::format(".{}", hook);
  if (ctx.pass == 1) key += ".u";
  return key;
}

struct Item {
  std::string key;
  std::string hook;
  CaptureContext ctx;
  at::Tensor tensor;
  std::uint64_t bytes = 0;
};

// The shard being written (safetensors: 8-byte little-endian header length, JSON header padded
// to 8 bytes, data): tensor bytes go to `<shard>.tmp` as they come, after header_room bytes;
// close() fills the room with the header, or assembles a second file when it does not fit.
class Shard {
 public:
  // header_room: bytes reserved at the start of the file for the length and the JSON header.
  Shard(const fs::path& dir, std::string name, std::uint64_t header_room)
      : name_(std::move(name)),
        final_(dir / name_),
        data_path_(fs::path(final_) += ".tmp"),
        header_room_(header_room) {
    data_ = std::fopen(data_path_.c_str(), "w+b");
    if (!data_) throw_io(data_path_, "cannot create");
    if (std::fseek(data_, long(header_room_), SEEK_SET) != 0) throw_io(data_path_, "cannot write");
  }
  ~Shard() { discard(); }
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  const std::string& name() const { return name_; }
  std::uint64_t bytes() const { return offset_; }
  bool empty() const { return header_.empty(); }

  // `tensor` is CPU, contiguous, of a dtype safetensors names as `dtype`.
  void add(const std::string& key, const at::Tensor& tensor, const std::string& dtype) {
    const std::uint64_t n = tensor.nbytes();
    if (n > 0 && std::fwrite(tensor.data_ptr(), 1, n, data_) != n) throw_io(data_path_, "cannot write");
    header_[key] = {{"dtype", dtype}, {"shape", tensor.sizes().vec()}, {"data_offsets", {offset_, offset_ + n}}};
    offset_ += n;
  }

  // Writes the header and renames the shard into place; returns the header's size.
  std::uint64_t close() {
    std::string header = header_.dump();
    const std::uint64_t header_size = header.size();
    if (std::fflush(data_) != 0) throw_io(data_path_, "cannot write");
    const std::uint64_t padding = header_room_ - 8 - std::min(header_room_ - 8, header.size());
    if (8 + header.size() <= header_room_ && padding <= std::max<std::uint64_t>(offset_ / 8, 4096)) {
      header.append(padding, ' ');
      const std::uint64_t length = header.size();  // little-endian host (checked above)
      pwrite_all(&length, sizeof length, 0);
      pwrite_all(header.data(), header.size(), 8);
      // Only the bytes the header describes: a write that failed halfway is left out.
      if (::ftruncate(fileno(data_), off_t(header_room_ + offset_)) != 0) throw_io(data_path_, "cannot write");
      std::FILE* closing = data_;
      data_ = nullptr;  // flush_and_close closes it, even when it throws
      try {
        flush_and_close(closing, data_path_);
        if (std::rename(data_path_.c_str(), final_.c_str()) != 0) throw_io(final_, "cannot rename into place");
      } catch (...) {
        std::error_code ec;
        fs::remove(data_path_, ec);
        throw;
      }
      return header_size;
    }
    assemble(std::move(header));
    return header_size;
  }

 private:
  // The header did not fit its room (or would leave too much padding): header and data are
  // written to a second file.
  void assemble(std::string header) {
    header.append((8 - header.size() % 8) % 8, ' ');
    const fs::path tmp = fs::path(final_) += ".assembling.tmp";
    std::FILE* out = std::fopen(tmp.c_str(), "wb");
    if (!out) throw_io(tmp, "cannot create");
    try {
      const std::uint64_t length = header.size();  // little-endian host (checked above)
      write(out, tmp, &length, sizeof length);
      write(out, tmp, header.data(), header.size());
      if (std::fseek(data_, long(header_room_), SEEK_SET) != 0) throw_io(data_path_, "cannot read back");
      // Only the bytes the header describes: a write that failed halfway is left out.
      std::vector<char> buffer(1 << 20);
      for (std::uint64_t left = offset_; left > 0;) {
        const std::size_t n = std::fread(buffer.data(), 1, std::min<std::uint64_t>(buffer.size(), left), data_);
        if (n == 0) throw_io(data_path_, "cannot read back");
        write(out, tmp, buffer.data(), n);
        left -= n;
      }
      std::FILE* closing = out;
      out = nullptr;  // flush_and_close closes it, even when it throws
      flush_and_close(closing, tmp);
    } catch (...) {
      if (out) std::fclose(out);
      std::error_code ec;
      fs::remove(tmp, ec);
      throw;
    }
    if (std::rename(tmp.c_str(), final_.c_str()) != 0) throw_io(final_, "cannot rename into place");
    discard();
  }

  void pwrite_all(const void* data, std::size_t n, std::uint64_t at) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t done = ::pwrite(fileno(data_), p, n, off_t(at));
      if (done < 0 && errno == EINTR) continue;
      if (done <= 0) throw_io(data_path_, "cannot write");
      p += done;
      n -= std::size_t(done);
      at += std::uint64_t(done);
    }
  }
  static void write(std::FILE* f, const fs::path& file, const void* data, std::size_t n) {
    if (std::fwrite(data, 1, n, f) != n) throw_io(file, "cannot write");
  }
  void discard() noexcept {
    if (!data_) return;
    std::fclose(data_);
    data_ = nullptr;
    std::error_code ec;
    fs::remove(data_path_, ec);
  }

  std::string name_;
  fs::path final_, data_path_;
  std::FILE* data_ = nullptr;
  json header_ = json::object();
  std::uint64_t offset_ = 0;
  std::uint64_t header_room_;
};

class RunWriter final : public CaptureSink {
 public:
  ~RunWriter() override {
    if (state_ == State::open) abort("run was not finished");
  }

  void open(const json& options) override {
    if (state_ != State::closed) throw Error(fmt::format("{}: run writer opened twice", options_.out.string()));
    options_ = parse_options(options);
    try {
      std::error_code ec;
      if (options_.prepare) prepare_directory(options_, lock_);
      else if (!fs::is_directory(options_.out, ec))
        throw Error(fmt::format("{}: the run directory does not exist: rank 0 creates it, so --out must be on storage "
                                "every rank shares (or give --local-out, then `hooklens merge`)",
                                options_.out.string()));
      if (options_.rank) open_part();
      // A resumed rank 0's part is first written at its first checkpoint: until then the failed
      // run's part of the same name is the session's to read.
      if (!options_.resume) write_manifest(json::object(), false);
      thread_ = std::thread([this] { writer_loop(); });
    } catch (...) {
      rank_lock_.release();
      lock_.release();
      throw;
    }
    state_ = State::open;
  }

  void capture(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor) override {
    if (state_ != State::open)
      throw Error(fmt::format("{}: capture() on a run writer that is not open", options_.out.string()));
    if (!tensor.defined())
      throw Error(fmt::format("{}: capture of hook '{}' has no tensor", options_.out.string(), hook));
    Item item{unique_key(capture_key(hook, ctx)), std::string(hook), ctx, tensor, tensor.nbytes()};
    std::unique_lock<std::mutex> lock(mutex_);
    // An item larger than the whole queue still goes through once the queue is empty.
    not_full_.wait(lock, [&] {
      return !error_.empty() || queued_bytes_ == 0 || queued_bytes_ + item.bytes <= options_.queue_bytes;
    });
    if (!error_.empty()) throw Error(error_);
    const bool wake = queued_bytes_ < wake_bytes() && queued_bytes_ + item.bytes >= wake_bytes();
    queued_bytes_ += item.bytes;
    queue_.push_back(std::move(item));
    lock.unlock();
    if (wake) not_empty_.notify_one();
  }

  void finish(const json& manifest) override {
    if (state_ != State::open)
      throw Error(fmt::format("{}: finish() on a run writer that is not open", options_.out.string()));
    if (!manifest.is_object() && !manifest.is_null())
      throw UsageError(fmt::format("{}: the run manifest must be a JSON object", options_.out.string()));
    stop_thread();
    state_ = State::done;
    if (!error_.empty()) {
      try {
        write_manifest(manifest, false, error_);
      } catch (const std::exception&) {
        // the writer's own error is the one to report
      }
      rank_lock_.release();
      lock_.release();
      throw Error(error_);
    }
    write_manifest(manifest, true);
    rank_lock_.release();
    lock_.release();
  }

  void abort(const std::string& reason) noexcept override {
    if (state_ != State::open) return;
    state_ = State::done;
    try {
      stop_thread();  // the thread writes what is already queued, then closes the shard
      // A resumed part never written leaves the failed run's as it was.
      if (!options_.resume || manifest_written_)
        write_manifest(json::object(), false, error_.empty() ? reason : reason + "; writer error: " + error_);
    } catch (...) {
      // nothing more can be done: the manifest on disk already says "complete": false
    }
    rank_lock_.release();
    lock_.release();
  }

  std::string location() const override { return options_.out.string(); }

  // A marker behind the prompt's captures: when the writer reaches it they are all in a shard, and
  // once that shard is closed the part of the manifest lists the prompt as done (--resume keeps it).
  void end_prompt(int prompt) override {
    if (state_ != State::open || !options_.rank) return;
    Item marker;
    marker.ctx.prompt = prompt;
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_.empty()) queue_.push_back(std::move(marker));
  }

 private:
  enum class State { closed, open, done };

  // A rank's part of a run: its own lock, and shard numbers after those a failed run left (its
  // unfinished .tmp shards are removed). The run's manifest.json is the session's to write.
  void open_part() {
    const int rank = *options_.rank;
    rank_lock_.acquire(options_.out, fmt::format(".hooklens-writer-rank{:05d}.lock", rank));
    const std::string prefix = rank_shard_prefix(rank);
    std::error_code ec;
    for (fs::directory_iterator it(options_.out, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.rfind(prefix, 0) != 0) continue;
      if (ends_with(name, ".tmp")) {
        std::error_code removed;
        fs::remove(it->path(), removed);
        continue;
      }
      next_shard_ = std::max(next_shard_, std::atoi(name.c_str() + prefix.size()) + 1);
    }
    if (ec) throw Error(fmt::format("{}: cannot list the run directory: {}", options_.out.string(), ec.message()));
  }

  std::string shard_name(int index) const {
    return options_.rank ? rank_shard_name(*options_.rank, index) : fmt::format("captures-{:05d}.safetensors", index);
  }

  std::string unique_key(std::string key) {
    if (keys_.insert(key).second) return key;
    for (int n = 2;; ++n) {
      std::string candidate = fmt::format("{}#{}", key, n);
      if (keys_.insert(candidate).second) return candidate;
    }
  }

  // The writer sleeps until this many bytes are queued, then empties the queue: with many small
  // captures (a decode step's patterns) the model's thread does not wake it, and it does not take
  // a core from the compute threads, for every one. Small, so that little is left to write when
  // the run ends.
  std::uint64_t wake_bytes() const { return std::clamp<std::uint64_t>(options_.queue_bytes / 4, 1, 256ull << 10); }

  void stop_thread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    not_empty_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

  // Runs on the writer thread. Never lets an exception escape: the first error is kept and
  // rethrown on the model's thread, and the queue is emptied so no capture() waits forever.
  void writer_loop() noexcept {
    try {
      for (;;) {
        Item item;
        {
          std::unique_lock<std::mutex> lock(mutex_);
          if (queue_.empty()) not_empty_.wait(lock, [&] { return queued_bytes_ >= wake_bytes() || stopping_; });
          if (queue_.empty()) break;
          item = std::move(queue_.front());
          queue_.pop_front();
        }
        write_item(item);
        item.tensor = at::Tensor();  // release before making room in the queue
        {
          std::lock_guard<std::mutex> lock(mutex_);
          queued_bytes_ -= item.bytes;
        }
        not_full_.notify_all();
      }
      close_shard();
    } catch (const std::exception& e) {
      fail(e.what());
    } catch (...) {
      fail("unknown error in the run writer thread");
    }
    salvage_shard();
  }

  // After an error, keeps what already reached the open shard if the disk still allows it.
  void salvage_shard() noexcept {
    try {
      close_shard();
    } catch (...) {
      // the first error is the one reported
    }
    shard_.reset();
  }

  void fail(const std::string& message) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_.empty()) error_ = message;
    queue_.clear();
    queued_bytes_ = 0;
    not_full_.notify_all();
  }

  // The tensor as stored: CPU, contiguous, floating point as F32 or F16, other types unchanged.
  std::pair<at::Tensor, std::string> convert(const Item& item) const {
    try {
      at::Tensor t = item.tensor.detach();
      if (t.is_floating_point()) t = t.to(at::kCPU, options_.f16 ? at::kHalf : at::kFloat);
      t = t.to(at::kCPU).contiguous();
      std::string dtype = safetensors_dtype_name(t.scalar_type());
      return {std::move(t), std::move(dtype)};
    } catch (const c10::Error& e) {
      throw Error(fmt::format("{}: cannot store capture '{}': {}", options_.out.string(), item.key,
                              e.what_without_backtrace()));
    } catch (const std::exception& e) {
      throw Error(fmt::format("{}: cannot store capture '{}': {}", options_.out.string(), item.key, e.what()));
    }
  }

  void write_item(const Item& item) {
    if (!item.tensor.defined()) {  // end_prompt's marker
      pending_done_.push_back(item.ctx.prompt);
      return;
    }
    const auto [t, dtype] = convert(item);
    if (shard_ && !shard_->empty() && shard_->bytes() + t.nbytes() > options_.shard_bytes) close_shard(true);
    if (!shard_) shard_ = std::make_unique<Shard>(options_.out, shard_name(next_shard_++), header_room_);
    shard_->add(item.key, t, dtype);
    pending_.push_back(encode_capture_entry({item.key, item.hook, shard_->name(), dtype, t.sizes().vec(), item.ctx}));
  }

  // Closing a shard is also a checkpoint: the manifest then lists every capture on disk.
  // `rotating`: a new shard follows (the run goes on).
  void close_shard(bool rotating = false) {
    if (!shard_) {  // the prompts marked since the last shard closed have nothing in an open one
      done_.insert(done_.end(), pending_done_.begin(), pending_done_.end());
      pending_done_.clear();
      return;
    }
    const std::uint64_t header_size = shard_->close();
    shard_.reset();
    // The next shard of the run holds about as many captures: room for this header and a quarter.
    header_room_ = std::max(header_room_, (8 + header_size + header_size / 4 + 4095) / 4096 * 4096);
#ifdef __GLIBC__
    // Tensors are allocated on the model's thread and freed on this one; glibc tends to keep such
    // freed blocks rather than reuse them, and the RSS crept towards the run's total size (1 GB
    // run: 0.5-1 GB). Returning free memory at each shard rotation kept it near queue_bytes
    // (~190 MB). Not at the end of a run: a trim makes the model's next forward pass fault its
    // working memory in again (+50 % on a 128-token forward in `hooklens bench`), which a
    // process running several runs would pay for nothing.
    if (rotating) malloc_trim(0);
#endif
    for (auto& entry : pending_) captures_.push_back(std::move(entry));
    pending_.clear();
    done_.insert(done_.end(), pending_done_.begin(), pending_done_.end());
    pending_done_.clear();
    write_manifest(json::object(), false);
  }

  // Called before the thread starts, on the thread, or after it was joined: never concurrently.
  // The run's manifest.json, or for a rank its part (which also lists the prompts done).
  void write_manifest(const json& fields, bool complete, const std::string& error = "") {
    json manifest = fields.is_object() ? fields : json::object();
    if (options_.rank) manifest["part"] = {{"rank", *options_.rank}, {"prompts_done", done_}};
    manifest["format"] = kRunFormatName;
    manifest["version"] = kRunFormatVersion;
    manifest["complete"] = complete;
    manifest["captures"] = captures_;
    if (!error.empty()) manifest["error"] = error;
    write_manifest_file(options_.out / (options_.rank ? rank_part_name(*options_.rank) : kRunManifestName), manifest);
    manifest_written_ = true;
  }

  WriterOptions options_;
  DirectoryLock lock_;  // held from open() until the run is finished or aborted (by rank 0 in a run of several)
  DirectoryLock rank_lock_;  // a rank's, over its part
  State state_ = State::closed;
  std::unordered_set<std::string> keys_;  // model thread only
  std::uint64_t header_room_ = kInitialHeaderRoom;  // writer thread only

  std::mutex mutex_;
  std::condition_variable not_empty_, not_full_;
  std::deque<Item> queue_;
  std::uint64_t queued_bytes_ = 0;
  bool stopping_ = false;
  std::string error_;
  std::thread thread_;

  // Writer thread only (read by the model thread after join).
  std::unique_ptr<Shard> shard_;
  int next_shard_ = 0;
  json captures_ = json::array();  // entries of closed shards
  json pending_ = json::array();   // entries of the open shard
  std::vector<int> done_, pending_done_;
  bool manifest_written_ = false;  // end_prompt()s reached before the last closed shard, and since
};

}  // namespace
}  // namespace hooklens

HOOKLENS_DEFINE_PLUGIN(hooklens::CaptureSink, hooklens::RunWriter, "sink", "run_writer", "0.1.0",
                       "writes captures to a run directory: manifest.json + captures-NNNNN.safetensors shards")
