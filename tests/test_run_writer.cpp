// The run_writer sink plugin, loaded as users load it (build/plugins/hooklens_run_writer.so), read
// back with RunReader, the safetensors reader, and plain Python (struct + json + numpy).
#include "test_util.h"

#include <hooklens/error.h>
#include <hooklens/plugin.h>
#include <hooklens/run.h>
#include <hooklens/sink.h>
#include <hooklens/weights.h>

#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randn.h>
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <set>

namespace fs = std::filesystem;
using hooklens::CaptureContext;
using hooklens::Phase;
using hooklens::RunReader;
using nlohmann::json;

using test::error_of;
using test::TempDir;
using test::context;

namespace {

std::shared_ptr<hooklens::CaptureSink> make_sink() {
  return std::static_pointer_cast<hooklens::CaptureSink>(
      hooklens::PluginRegistry::create_from(HOOKLENS_BUILD_DIR "/plugins/hooklens_run_writer.so", "sink"));
}

struct Capture {
  std::string hook;
  CaptureContext ctx;
  at::Tensor tensor;
  std::string key;  // what the manifest must say
};

// Captures of different shapes, dtypes, layouts and contexts, including a repeated key.
std::vector<Capture> varied_captures() {
  const auto pattern = "blocks.0.attn.hook_pattern";
  return {
      {pattern, context(0, Phase::prefill, 0, -1, 0, 0), at::randn({1, 4, 3, 3}), "p0.s0.blocks.0.attn.hook_pattern"},
      {pattern, context(0, Phase::decode, 1, -1, 0, 3), at::randn({1, 4, 1, 4}), "p0.s1.blocks.0.attn.hook_pattern"},
      {"hook_logits", context(1, Phase::denoise, 2, 1, -1, 0), at::randn({1, 7, 5}).transpose(1, 2),
       "p1.s2.b1.hook_logits"},
      {"hook_logits", context(1, Phase::denoise, 2, 1, -1, 0, 1), at::randn({1, 5, 7}), "p1.s2.b1.hook_logits.u"},
      {pattern, context(0, Phase::prefill, 0, -1, 0, 0), at::randn({1, 4, 3, 3}), "p0.s0.blocks.0.attn.hook_pattern#2"},
      {"blocks.1.mlp.hook_post", context(0, Phase::prefill, 0, -1, 1, 0), at::randn({2, 3}, at::kDouble),
       "p0.s0.blocks.1.mlp.hook_post"},
      {"hook_embed", context(0, Phase::decode, 3, -1, -1, 5), at::randn(at::IntArrayRef{}), "p0.s3.hook_embed"},
  };
}

const json kManifestFields = {
    {"model", {{"adapter", "test"}, {"path", "/models/none"}, {"n_layers", 2}, {"n_heads", 4}}},
    {"prompts", {{{"text", "hi"}, {"ids", {1, 2}}, {"tokens", {"h", "i"}}}}},
    {"generation", {{"mode", "none"}, {"output_ids", json::array()}}},
};

void write_run(const json& options, const std::vector<Capture>& captures) {
  auto sink = make_sink();
  sink->open(options);
  for (const auto& c : captures) sink->capture(c.hook, c.ctx, c.tensor);
  sink->finish(kManifestFields);
}

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

void check_entry(const json& entry, const Capture& c, const char* dtype) {
  std::set<std::string> fields;
  for (const auto& [k, v] : entry.items()) fields.insert(k);
  CHECK(fields == std::set<std::string>{"key", "hook", "prompt", "phase", "step", "block", "layer", "query_offset",
                                        "key_offset", "pass", "shape", "dtype", "file"});
  CHECK(entry.at("key") == c.key);
  CHECK(entry.at("hook") == c.hook);
  CHECK(entry.at("prompt") == c.ctx.prompt);
  CHECK(entry.at("phase") == hooklens::phase_name(c.ctx.phase));
  CHECK(entry.at("step") == c.ctx.step);
  CHECK(entry.at("block") == c.ctx.block);
  CHECK(entry.at("layer") == c.ctx.layer);
  CHECK(entry.at("query_offset") == c.ctx.query_offset);
  CHECK(entry.at("key_offset") == c.ctx.key_offset);
  CHECK(entry.at("pass") == c.ctx.pass);
  CHECK(entry.at("shape") == json(c.tensor.sizes().vec()));
  CHECK(entry.at("dtype") == dtype);
}

// Every key of a shard, read with the safetensors reader, grouped as the manifest says.
void check_shards_match_manifest(const RunReader& run) {
  std::map<std::string, std::set<std::string>> expected;
  for (std::size_t i = 0; i < run.capture_count(); ++i)
    expected[run.capture(i).at("file")].insert(run.capture(i).at("key").get<std::string>());
  for (const auto& [file, keys] : expected) {
    std::set<std::string> found;
    for (const auto& [key, tensor] : hooklens::read_safetensors(run.directory() / file)) found.insert(key);
    CHECK(found == keys);
  }
}

}  // namespace

TEST_CASE("a finished run reads back as written (F32)") {
  TempDir tmp;
  const fs::path out = tmp.path / "run";
  const auto captures = varied_captures();
  write_run({{"out", out.string()}}, captures);

  CHECK(files_in(out) == std::set<std::string>{"manifest.json", "captures-00000.safetensors"});
  RunReader run(out);
  const json& m = run.manifest();
  CHECK(m.at("format") == "hooklens-run");
  CHECK(m.at("version") == 1);
  CHECK(m.at("complete") == true);
  CHECK_FALSE(m.contains("error"));
  for (const char* field : {"model", "prompts", "generation"}) CHECK(m.at(field) == kManifestFields.at(field));
  REQUIRE(run.capture_count() == captures.size());
  for (std::size_t i = 0; i < captures.size(); ++i) {
    INFO("capture " << i << " " << captures[i].key);
    check_entry(run.capture(i), captures[i], "F32");
    CHECK(run.capture(i).at("file") == "captures-00000.safetensors");
    const at::Tensor loaded = run.load(i);
    CHECK(loaded.scalar_type() == at::kFloat);
    CHECK(at::equal(loaded, captures[i].tensor.to(at::kFloat)));
  }
  check_shards_match_manifest(run);
}

TEST_CASE("dtype F16 stores floating tensors as half") {
  TempDir tmp;
  const fs::path out = tmp.path / "run";
  const auto captures = varied_captures();
  write_run({{"out", out.string()}, {"dtype", "F16"}}, captures);
  RunReader run(out);
  REQUIRE(run.capture_count() == captures.size());
  for (std::size_t i = 0; i < captures.size(); ++i) {
    INFO("capture " << i);
    check_entry(run.capture(i), captures[i], "F16");
    const at::Tensor loaded = run.load(i);
    CHECK(loaded.scalar_type() == at::kHalf);
    const at::Tensor original = captures[i].tensor.to(at::kFloat);
    CHECK(at::equal(loaded, captures[i].tensor.to(at::kHalf)));
    CHECK(at::allclose(loaded.to(at::kFloat), original, /*rtol=*/1e-3, /*atol=*/1e-4));
  }
}

TEST_CASE("shards roll over at shard_bytes") {
  TempDir tmp;
  const fs::path out = tmp.path / "run";
  std::vector<Capture> captures;
  auto add = [&](int step, std::int64_t floats) {
    captures.push_back({"hook_embed", context(0, Phase::decode, step, -1, -1, step),
                        at::arange(floats, at::kFloat).add(step), "p0.s" + std::to_string(step) + ".hook_embed"});
  };
  for (int step = 0; step < 5; ++step) add(step, 100);  // 400 bytes each: two fit in 1000
  add(5, 500);                                          // 2000 bytes: a shard of its own
  add(6, 100);
  write_run({{"out", out.string()}, {"shard_bytes", 1000}}, captures);

  const std::vector<std::string> expected_file = {"captures-00000.safetensors", "captures-00000.safetensors",
                                                  "captures-00001.safetensors", "captures-00001.safetensors",
                                                  "captures-00002.safetensors", "captures-00003.safetensors",
                                                  "captures-00004.safetensors"};
  RunReader run(out);
  REQUIRE(run.capture_count() == captures.size());
  for (std::size_t i = 0; i < captures.size(); ++i) {
    CHECK(run.capture(i).at("file") == expected_file[i]);
    CHECK(at::equal(run.load(i), captures[i].tensor));
  }
  CHECK(files_in(out).size() == 6);
  check_shards_match_manifest(run);
}

// The header length a safetensors file starts with.
std::uint64_t header_length(const fs::path& file) {
  std::uint64_t n = 0;
  std::ifstream(file, std::ios::binary).read(reinterpret_cast<char*>(&n), sizeof n);
  return n;
}

TEST_CASE("a shard is written once: its header fills the room left before the data") {
  TempDir tmp;
  SECTION("the header fits the first shard's 64 KiB") {
    const fs::path out = tmp.path / "run";
    std::vector<Capture> captures;
    for (int step = 0; step < 4; ++step)  // 4 x 256 KiB
      captures.push_back({"hook_embed", context(0, Phase::decode, step, -1, -1, step), at::randn({65536}),
                          "p0.s" + std::to_string(step) + ".hook_embed"});
    write_run({{"out", out.string()}}, captures);
    const fs::path shard = out / "captures-00000.safetensors";
    CHECK(files_in(out) == std::set<std::string>{"manifest.json", "captures-00000.safetensors"});
    CHECK(header_length(shard) == 65536 - 8);
    CHECK(fs::file_size(shard) == 65536 + 4 * 65536 * 4);
    RunReader run(out);
    REQUIRE(run.capture_count() == captures.size());
    for (std::size_t i = 0; i < captures.size(); ++i) CHECK(at::equal(run.load(i), captures[i].tensor));
    check_shards_match_manifest(run);
  }
  SECTION("a header that outgrew its room is assembled, and the next shard gets more room") {
    const fs::path out = tmp.path / "run";
    std::vector<Capture> captures;
    for (int step = 0; step < 1400; ++step)  // 1 KiB each, ~100 header bytes each
      captures.push_back({"blocks.0.hook_resid_post", context(0, Phase::decode, step, -1, 0, step),
                          at::randn({256}), "p0.s" + std::to_string(step) + ".blocks.0.hook_resid_post"});
    write_run({{"out", out.string()}, {"shard_bytes", 700 << 10}}, captures);
    const std::uint64_t first = header_length(out / "captures-00000.safetensors");
    const std::uint64_t second = header_length(out / "captures-00001.safetensors");
    CHECK(first + 8 > 65536);  // did not fit: header then data, padded to 8 only
    CHECK(first % 8 == 0);
    CHECK((first + 8) % 4096 != 0);
    CHECK((second + 8) % 4096 == 0);  // the grown room
    CHECK(second + 8 > 65536);
    CHECK(files_in(out).size() == 3);
    RunReader run(out);
    REQUIRE(run.capture_count() == captures.size());
    for (std::size_t i = 0; i < captures.size(); i += 97) CHECK(at::equal(run.load(i), captures[i].tensor));
    check_shards_match_manifest(run);
  }
}

TEST_CASE("a tiny queue blocks the caller but loses nothing") {
  TempDir tmp;
  const fs::path out = tmp.path / "run";
  std::vector<Capture> captures;
  for (int step = 0; step < 300; ++step)
    captures.push_back({"blocks.0.hook_resid_post", context(0, Phase::decode, step, -1, 0, step),
                        at::randn({1, 1, 16}), "p0.s" + std::to_string(step) + ".blocks.0.hook_resid_post"});
  write_run({{"out", out.string()}, {"queue_bytes", 1}, {"shard_bytes", 4096}}, captures);
  RunReader run(out);
  REQUIRE(run.capture_count() == captures.size());
  for (std::size_t i = 0; i < captures.size(); ++i) {
    CHECK(run.capture(i).at("key") == captures[i].key);
    CHECK(at::equal(run.load(i), captures[i].tensor));
  }
}

TEST_CASE("an unfinished run never looks complete") {
  TempDir tmp;
  const fs::path out = tmp.path / "run";
  const auto captures = varied_captures();
  auto sink = make_sink();
  sink->open({{"out", out.string()}});
  CHECK(sink->location() == out.string());
  CHECK_THAT(error_of([&] { RunReader{out}; }), Catch::Contains("is incomplete") && Catch::Contains(out.string()));
  for (std::size_t i = 0; i < 3; ++i) sink->capture(captures[i].hook, captures[i].ctx, captures[i].tensor);

  SECTION("abort keeps what was queued and records the reason") {
    sink->abort("the model exploded");
    CHECK_THAT(error_of([&] { RunReader{out}; }), Catch::Contains("is incomplete"));
    RunReader run(out, /*allow_incomplete=*/true);
    CHECK(run.manifest().at("complete") == false);
    CHECK(run.manifest().at("error") == "the model exploded");
    REQUIRE(run.capture_count() == 3);
    for (std::size_t i = 0; i < 3; ++i) CHECK(at::equal(run.load(i), captures[i].tensor));
    CHECK_THROWS_AS(sink->capture(captures[0].hook, captures[0].ctx, captures[0].tensor), hooklens::Error);
    CHECK_THROWS_AS(sink->finish(kManifestFields), hooklens::Error);
  }
  SECTION("destroying an unfinished sink aborts the run") {
    sink.reset();
    RunReader run(out, /*allow_incomplete=*/true);
    CHECK(run.manifest().at("complete") == false);
    CHECK(run.manifest().at("error") == "run was not finished");
    CHECK(run.capture_count() == 3);
  }
  for (const auto& name : files_in(out)) CHECK(name.find(".tmp") == std::string::npos);
}

TEST_CASE("a writer error reaches the model's thread as an Error") {
  TempDir tmp;
  const fs::path out = tmp.path / "run";
  auto sink = make_sink();
  // With a one-byte queue each capture waits for the previous one to be written, so every capture
  // after the first sees the writer's error.
  sink->open({{"out", out.string()}, {"queue_bytes", 1}});
  fs::remove_all(out);  // the writer thread cannot create its first shard now
  int refused = 0;
  for (int step = 0; step < 50; ++step) {
    try {
      sink->capture("hook_embed", context(0, Phase::decode, step, -1, -1, step), at::randn({8}));
    } catch (const hooklens::Error& e) {
      CHECK_THAT(e.what(), Catch::Contains("captures-00000.safetensors"));
      ++refused;
    }
  }
  const std::string error = error_of([&] { sink->finish(kManifestFields); });
  CHECK_THAT(error, Catch::Contains((out / "captures-00000.safetensors").string()) &&
                        Catch::Contains("No such file or directory"));
  CHECK(refused == 49);
}

TEST_CASE("integer tensors are stored as they are; an unstorable dtype fails the run cleanly") {
  TempDir tmp;
  const fs::path out = tmp.path / "run";
  auto sink = make_sink();
  sink->open({{"out", out.string()}, {"dtype", "F16"}, {"queue_bytes", 1}});
  const at::Tensor ids = at::arange(6, at::kLong).view({2, 3});
  sink->capture("hook_ids", context(0, Phase::prefill, 0, -1, -1, 0), ids);
  sink->capture("hook_complex", context(0, Phase::prefill, 0, -1, -1, 0), at::randn({2}, at::kComplexFloat));
  const std::string error = error_of([&] { sink->finish(kManifestFields); });
  CHECK_THAT(error, Catch::Contains(out.string()) && Catch::Contains("'p0.s0.hook_complex'"));
  CHECK(error.find('\n') == std::string::npos);
  RunReader run(out, /*allow_incomplete=*/true);
  CHECK(run.manifest().at("error") == error);
  REQUIRE(run.capture_count() == 1);  // the shard written before the failure
  CHECK(run.capture(0).at("dtype") == "I64");
  CHECK(at::equal(run.load(0), ids));
}

TEST_CASE("open refuses what it must not overwrite, and bad options") {
  TempDir tmp;
  const fs::path foreign = tmp.path / "foreign";
  fs::create_directories(foreign);
  std::ofstream(foreign / "precious.txt") << "keep me";
  CHECK_THAT(error_of([&] { make_sink()->open({{"out", foreign.string()}}); }),
             Catch::Contains(foreign.string()) && Catch::Contains("not empty"));
  CHECK_THAT(error_of([&] { make_sink()->open({{"out", foreign.string()}, {"overwrite", true}}); }),
             Catch::Contains(foreign.string()) && Catch::Contains("not a hooklens run directory"));
  CHECK(fs::exists(foreign / "precious.txt"));

  const fs::path file = tmp.path / "a_file";
  std::ofstream(file) << "x";
  CHECK_THAT(error_of([&] { make_sink()->open({{"out", file.string()}}); }), Catch::Contains("not a directory"));

  const fs::path empty = tmp.path / "empty";
  fs::create_directories(empty);
  write_run({{"out", empty.string()}}, varied_captures());
  CHECK(RunReader(empty).capture_count() == varied_captures().size());

  // A previous run is replaced only when asked.
  CHECK_THAT(error_of([&] { make_sink()->open({{"out", empty.string()}}); }), Catch::Contains("not empty"));
  write_run({{"out", empty.string()}, {"overwrite", true}},
            {{"hook_embed", context(0, Phase::prefill, 0, -1, -1, 0), at::randn({2}), "p0.s0.hook_embed"}});
  CHECK(RunReader(empty).capture_count() == 1);

  for (const json& bad : {json{{"dtype", "F16"}}, json{{"out", (tmp.path / "x").string()}, {"dtype", "F8"}},
                          json{{"out", (tmp.path / "x").string()}, {"queue_bytes", 0}},
                          json{{"out", (tmp.path / "x").string()}, {"shard_size", 10}},
                          json{{"out", (tmp.path / "x").string()}, {"overwrite", "yes"}}}) {
    INFO(bad.dump());
    CHECK_THROWS_AS(make_sink()->open(bad), hooklens::UsageError);
  }
  CHECK_FALSE(fs::exists(tmp.path / "x"));
}

TEST_CASE("a run directory has one writer: a second is refused before it deletes or writes anything") {
  TempDir tmp;
  const fs::path out = tmp.path / "run";
  const fs::path lock = out / ".hooklens-writer.lock";
  const auto captures = varied_captures();
  auto first = make_sink();
  first->open({{"out", out.string()}});
  CHECK(test::read_file(lock) == std::to_string(getpid()) + "\n");
  first->capture(captures[0].hook, captures[0].ctx, captures[0].tensor);
  const std::string busy = fmt::format("{}: is being written by another process (pid {})", out.string(), getpid());
  for (const bool overwrite : {false, true}) {
    INFO("overwrite " << overwrite);
    auto second = make_sink();
    const std::string error = error_of([&] { second->open({{"out", out.string()}, {"overwrite", overwrite}}); });
    CHECK_THAT(error, Catch::StartsWith(busy));
    CHECK(fs::exists(out / "manifest.json"));  // nothing of the first run was deleted
  }
  first->capture(captures[1].hook, captures[1].ctx, captures[1].tensor);
  first->finish(kManifestFields);
  CHECK_FALSE(fs::exists(lock));  // released (and removed) with the finished run
  {
    RunReader run(out);
    REQUIRE(run.capture_count() == 2);
    CHECK(at::equal(run.load(1), captures[1].tensor));
  }
  // Once the first writer is done, the directory may be overwritten.
  write_run({{"out", out.string()}, {"overwrite", true}}, {captures[2]});
  CHECK(RunReader(out).capture_count() == 1);
  CHECK(files_in(out) == std::set<std::string>{"manifest.json", "captures-00000.safetensors"});
}

TEST_CASE("a lock file left by a killed writer does not block the next run") {
  TempDir tmp;
  const auto captures = varied_captures();
  // Killed before its manifest was written: the directory holds only the lock file.
  const fs::path bare = tmp.path / "bare";
  fs::create_directories(bare);
  std::ofstream(bare / ".hooklens-writer.lock") << "999999999\n";
  write_run({{"out", bare.string()}}, {captures[0]});
  CHECK(RunReader(bare).capture_count() == 1);
  // Killed mid-run: an incomplete run, which overwrite replaces.
  const fs::path killed = tmp.path / "killed";
  write_run({{"out", killed.string()}}, {captures[0], captures[1]});
  std::ofstream(killed / ".hooklens-writer.lock") << "999999999\n";
  CHECK_THAT(error_of([&] { make_sink()->open({{"out", killed.string()}}); }), Catch::Contains("not empty"));
  write_run({{"out", killed.string()}, {"overwrite", true}}, {captures[2]});
  CHECK(RunReader(killed).capture_count() == 1);
  CHECK_FALSE(fs::exists(killed / ".hooklens-writer.lock"));
}

TEST_CASE("a full disk fails the run with one clear error, and leaves no shard pretending to be whole") {
  test::TmpfsMount disk("1m");
  if (!disk.mounted) {
    test::skip(disk.why + " (as root it can): the full-disk case did not run");
    return;
  }
  const fs::path out = disk.path / "run";
  auto sink = make_sink();
  sink->open({{"out", out.string()}, {"shard_bytes", 300000}, {"queue_bytes", 1}});
  std::vector<at::Tensor> written;
  std::string error;
  try {
    for (int step = 0; step < 40; ++step) {  // 40 x 128 KiB: four times the disk
      written.push_back(at::randn({32768}));
      sink->capture("hook_embed", context(0, Phase::decode, step, -1, -1, step), written.back());
    }
    sink->finish(kManifestFields);
  } catch (const hooklens::Error& e) {
    error = e.what();
  }
  sink->abort(error);  // as the CLI does when a capture fails (nothing once finish() threw)
  CHECK_THAT(error, Catch::Contains(out.string()) && Catch::Contains("No space left on device"));
  CHECK(error.find('\n') == std::string::npos);
  CHECK_THAT(error_of([&] { RunReader{out}; }), Catch::Contains("is incomplete"));
  // What the manifest lists is whole; every file named as a shard reads back; no .tmp is left.
  RunReader run(out, /*allow_incomplete=*/true);
  CHECK(run.manifest().at("complete") == false);
  CHECK(run.capture_count() < written.size());
  for (std::size_t i = 0; i < run.capture_count(); ++i) CHECK(at::equal(run.load(i), written[i]));
  for (const auto& name : files_in(out)) {
    INFO(name);
    CHECK(name.find(".tmp") == std::string::npos);
    if (name != "manifest.json") CHECK_NOTHROW(hooklens::read_safetensors(out / name));
  }
}

TEST_CASE("a read-only place is refused at open, before anything is deleted") {
  test::TmpfsMount disk("1m");
  if (!disk.mounted) {
    test::skip(disk.why + " (as root it can): the read-only case did not run");
    return;
  }
  const fs::path empty = disk.path / "empty", old = disk.path / "old";
  fs::create_directories(empty);
  write_run({{"out", old.string()}}, {varied_captures()[0]});
  if (!disk.remount_read_only()) {
    test::skip("cannot remount the tmpfs read-only: the read-only part did not run");
    return;
  }
  for (const fs::path& out : {disk.path / "new", empty, old}) {
    INFO(out);
    const std::string error = error_of([&] { make_sink()->open({{"out", out.string()}, {"overwrite", true}}); });
    CHECK_THAT(error, Catch::Contains(out.string()) && Catch::Contains("Read-only file system"));
  }
  CHECK_FALSE(fs::exists(disk.path / "new"));
  CHECK(RunReader(old).capture_count() == 1);  // the previous run is untouched
}

TEST_CASE("RunReader refuses malformed run directories") {
  TempDir tmp;
  CHECK_THAT(error_of([&] { RunReader{tmp.path}; }), Catch::Contains("manifest.json"));
  std::ofstream(tmp.path / "manifest.json") << "{ not json";
  CHECK_THAT(error_of([&] { RunReader{tmp.path}; }), Catch::Contains("malformed"));
  std::ofstream(tmp.path / "manifest.json")
      << R"({"format": "hooklens-run", "version": 1, "complete": true, "captures": [)"
      << R"({"key": "k", "hook": "h", "file": "../escape.safetensors", "dtype": "F32", "shape": [1]}]})";
  CHECK_THAT(error_of([&] { RunReader{tmp.path}; }), Catch::Contains("outside the run directory"));
  std::ofstream(tmp.path / "manifest.json") << R"({"format": "hooklens-run", "version": 2, "complete": true})";
  CHECK_THAT(error_of([&] { RunReader{tmp.path}; }), Catch::Contains("version 2"));
}

TEST_CASE("a shard is readable with plain Python (struct + json + numpy)") {
  if (!test::python_has("numpy")) {
    test::skip("/usr/bin/python3 with numpy is not available: the Python check did not run");
    return;
  }
  TempDir tmp;
  const auto captures = varied_captures();
  const char* script = R"PY(
import json, struct, sys
import numpy as np
run = sys.argv[1]
manifest = json.load(open(run + "/manifest.json"))
assert manifest["format"] == "hooklens-run" and manifest["complete"] is True
out = {}
for c in manifest["captures"]:
    data = open(run + "/" + c["file"], "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0, "header not padded to 8 bytes"
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    ends = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert ends[0][0] == 0 and ends[-1][1] == len(body), "data does not cover the buffer"
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:])), "gaps between tensors"
    t = header[c["key"]]
    assert t["dtype"] == c["dtype"] and t["shape"] == c["shape"]
    begin, end = t["data_offsets"]
    dtype = {"F32": "<f4", "F16": "<f2"}[t["dtype"]]
    array = np.frombuffer(body[begin:end], dtype=dtype).reshape(t["shape"])
    out[c["key"]] = [float(x) for x in array.astype(np.float64).ravel()]
print(json.dumps(out))
)PY";
  std::ofstream(tmp.path / "read.py") << script;
  for (const char* dtype : {"F32", "F16"}) {
    INFO("dtype " << dtype);
    const fs::path out = tmp.path / dtype;
    write_run({{"out", out.string()}, {"dtype", dtype}, {"shard_bytes", 200}}, captures);
    const fs::path result = tmp.path / (std::string(dtype) + ".json");
    const std::string command = "/usr/bin/python3 " + (tmp.path / "read.py").string() + " " + out.string() + " > " +
                                result.string();
    REQUIRE(std::system(command.c_str()) == 0);
    const json values = json::parse(std::ifstream(result));
    REQUIRE(values.size() == captures.size());
    for (const auto& c : captures) {
      INFO(c.key);
      const bool f16 = std::string(dtype) == "F16";
      const at::Tensor expected = (f16 ? c.tensor.to(at::kHalf) : c.tensor).to(at::kFloat).contiguous();
      const auto flat = values.at(c.key).get<std::vector<double>>();
      REQUIRE(flat.size() == static_cast<std::size_t>(expected.numel()));
      const float* want = expected.data_ptr<float>();
      for (std::size_t j = 0; j < flat.size(); ++j) CHECK(static_cast<float>(flat[j]) == want[j]);
    }
  }
}
