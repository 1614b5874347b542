// Weight readers and the safetensors writer, checked against the upstream fixtures, files made by
// PyTorch itself (/usr/bin/python3), and hand-made hostile files.
#include "resource_bounds.h"
#include "test_util.h"

#include "hooklens/error.h"
#include "hooklens/weights.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
// After the torch headers: glog (pulled in by them) also defines CHECK, and Catch's must win.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <random>
#include <string>

namespace fs = std::filesystem;
using hooklens::TensorMap;

namespace {

const fs::path kFixtures = test::fixtures();

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag)
      : path(fs::temp_directory_path() / ("hooklens_test_weights_" + tag + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write_bytes(const fs::path& file, const std::string& bytes) {
  std::ofstream out(file, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// A safetensors file with the given header text and data bytes, the length prefix made to match.
void write_raw_safetensors(const fs::path& file, const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  write_bytes(file, bytes + header + data);
}

// `f` must throw hooklens::Error whose message names `file` and contains `fragment`.
void require_error(const std::function<void()>& f, const fs::path& file, const std::string& fragment) {
  try {
    f();
  } catch (const hooklens::Error& e) {
    const std::string message = e.what();
    INFO("message: " << message);
    CHECK(message.find(file.string()) != std::string::npos);
    CHECK(message.find(fragment) != std::string::npos);
    CHECK(message.find('\n') == std::string::npos);
    return;
  }
  FAIL("no hooklens::Error for " << file << " (expected '" << fragment << "')");
}

// True if the data of `t` lies inside a memory mapping of `file` (per /proc/self/maps).
bool in_mapping_of(const at::Tensor& t, const fs::path& file) {
  const auto address = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  const std::string target = fs::canonical(file).string();
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    const auto slash = line.find('/');
    if (slash == std::string::npos || line.substr(slash) != target) continue;
    const std::uintptr_t begin = std::stoull(line.substr(0, line.find('-')), nullptr, 16);
    const std::uintptr_t end = std::stoull(line.substr(line.find('-') + 1), nullptr, 16);
    if (address >= begin && address < end) return true;
  }
  return false;
}

// Same names, dtypes, shapes and bit-equal values.
void require_same(const TensorMap& a, const TensorMap& b) {
  REQUIRE(a.size() == b.size());
  for (const auto& [name, t] : a) {
    INFO("tensor " << name);
    const auto it = b.find(name);
    REQUIRE(it != b.end());
    CHECK(t.scalar_type() == it->second.scalar_type());
    CHECK(t.sizes() == it->second.sizes());
    CHECK(at::equal(t, it->second));
  }
}

}  // namespace

TEST_CASE("fixtures: safetensors and pytorch_model.bin hold the same tensors", "[weights][fixtures]") {
  for (const char* name : {"tiny-neo-a", "tiny-gpt2-a"}) {
    INFO("fixture " << name);
    const fs::path dir = kFixtures / name;
    TensorMap st = hooklens::read_safetensors(dir / "model.safetensors");
    TensorMap bin = hooklens::read_pytorch_bin(dir / "pytorch_model.bin");
    REQUIRE(!st.empty());
    CHECK(hooklens::read_safetensors_metadata(dir / "model.safetensors") ==
          std::map<std::string, std::string>{{"format", "pt"}});

    // Every tensor is a view of the mapped file, not a copy.
    for (const auto& [key, t] : bin) {
      INFO("tensor " << key);
      CHECK(in_mapping_of(t, dir / "pytorch_model.bin"));
    }
    const auto lm_head = bin.find("lm_head.weight");
    if (lm_head != bin.end()) {
      // Tied to wte in the file (one storage): both view the same bytes.
      const at::Tensor& wte = bin.at("transformer.wte.weight");
      CHECK(at::equal(lm_head->second, wte));
      CHECK(lm_head->second.data_ptr() == wte.data_ptr());
      CHECK_FALSE(lm_head->second.is_same(wte));  // but each entry is a tensor of its own
      bin.erase(lm_head);
    }
    require_same(st, bin);
    CHECK(st.at("transformer.wte.weight").sizes() == at::IntArrayRef{50257, 32});
    CHECK(st.at("transformer.wte.weight").scalar_type() == at::kFloat);
  }
  TensorMap neo = hooklens::read_pytorch_bin(kFixtures / "tiny-neo-a" / "pytorch_model.bin");
  CHECK(neo.count("lm_head.weight") == 1);
}

TEST_CASE("safetensors: dtype names", "[weights]") {
  const std::pair<c10::ScalarType, const char*> names[] = {
      {at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"}, {at::kLong, "I64"},
      {at::kInt, "I32"},    {at::kShort, "I16"}, {at::kChar, "I8"},  {at::kByte, "U8"},       {at::kBool, "BOOL"}};
  for (const auto& [type, name] : names) {
    CHECK(hooklens::safetensors_dtype_name(type) == name);
    CHECK(hooklens::parse_safetensors_dtype(name) == type);
  }
  CHECK_THROWS_AS(hooklens::parse_safetensors_dtype("f32"), hooklens::Error);
  CHECK_THROWS_AS(hooklens::safetensors_dtype_name(at::kComplexFloat), hooklens::Error);
}

TEST_CASE("safetensors: write then read", "[weights]") {
  TempDir tmp("roundtrip");
  const fs::path file = tmp.path / "t.safetensors";
  const at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", at::randn({3, 5})},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"bf16", at::randn({2, 3}).to(at::kBFloat16)},
      {"i64", at::tensor(std::vector<std::int64_t>{-1, 0, std::int64_t(1) << 40})},
      {"u8", at::arange(256, at::kInt).to(at::kByte)},
      {"bool", at::tensor(std::vector<std::int64_t>{1, 0, 1}).to(at::kBool)},
      {"scalar", at::scalar_tensor(2.5, at::kDouble)},
      {"empty", at::zeros({0, 3}, at::kFloat)},
      {"transposed", base.t()},
      {"strided", base.slice(0, 1).slice(1, 0, 6, 2)},
  };
  REQUIRE_FALSE(tensors[8].second.is_contiguous());
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "h\u00e9llo \"q\""}};
  hooklens::write_safetensors(file, tensors, metadata);

  const std::string bytes = test::read_file(file);
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  CHECK(header_size % 8 == 0);
  std::uint64_t data_bytes = 0;
  for (const auto& [name, t] : tensors) data_bytes += t.nbytes();
  CHECK(bytes.size() == 8 + header_size + data_bytes);

  TensorMap back = hooklens::read_safetensors(file);
  REQUIRE(back.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    INFO("tensor " << name);
    CHECK(back.at(name).scalar_type() == t.scalar_type());
    CHECK(back.at(name).sizes() == t.sizes());
    CHECK(at::equal(back.at(name), t));
  }
  CHECK(back.at("scalar").dim() == 0);
  CHECK(hooklens::read_safetensors_metadata(file) == metadata);

  SECTION("no __metadata__ without metadata") {
    hooklens::write_safetensors(file, {{"x", at::ones({2})}});
    CHECK(test::read_file(file).find("__metadata__") == std::string::npos);
    CHECK(hooklens::read_safetensors_metadata(file).empty());
    CHECK(hooklens::read_safetensors(file).size() == 1);
  }
  SECTION("writer errors name the file") {
    require_error([&] { hooklens::write_safetensors(tmp.path / "no" / "dir.safetensors", {{"x", at::ones({2})}}); },
                  tmp.path / "no" / "dir.safetensors", "cannot open");
    require_error([&] { hooklens::write_safetensors(file, {{"x", at::ones({2})}, {"x", at::ones({2})}}); }, file,
                  "'x'");
    require_error([&] { hooklens::write_safetensors(file, {{"c", at::ones({2}, at::kComplexFloat)}}); }, file,
                  "cannot be stored");
    require_error([&] { hooklens::write_safetensors(file, {{"bad\xff", at::ones({2})}}); }, file, "UTF-8");
  }
}

TEST_CASE("safetensors: hostile files are rejected with the file name", "[weights]") {
  TempDir tmp("hostile");
  const fs::path f = tmp.path / "bad.safetensors";
  const auto read = [&] { hooklens::read_safetensors(f); };
  const std::string entry_f32_2 = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

  SECTION("missing file") { require_error(read, f, "cannot open"); }
  SECTION("shorter than the length prefix") {
    write_bytes(f, "abcde");
    require_error(read, f, "too short");
  }
  SECTION("truncated data") {
    hooklens::write_safetensors(f, {{"x", at::ones({64})}});
    const std::string full = test::read_file(f);
    write_bytes(f, full.substr(0, full.size() - 10));
    require_error(read, f, "outside the data section");
  }
  SECTION("header length larger than the file") {
    write_bytes(f, std::string("\xe8\x03\0\0\0\0\0\0", 8) + "{}");
    require_error(read, f, "exceeds the file size");
    require_error([&] { hooklens::read_safetensors_metadata(f); }, f, "exceeds the file size");
  }
  SECTION("header length over the limit") {
    const std::uint64_t n = 200u * 1024u * 1024u;
    std::string prefix(8, '\0');
    for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    write_bytes(f, prefix);
    fs::resize_file(f, 8 + n);  // sparse: costs no disk
    require_error(read, f, "limit");
  }
  SECTION("header not JSON") {
    write_raw_safetensors(f, "{\"a\": nope}", "");
    require_error(read, f, "malformed JSON");
  }
  SECTION("header not an object") {
    write_raw_safetensors(f, "[1, 2]", "");
    require_error(read, f, "not a JSON object");
  }
  SECTION("deeply nested header") {
    write_raw_safetensors(f, std::string(1000000, '[') + std::string(1000000, ']'), "");
    require_error(read, f, "header: JSON nested deeper than 128 levels");
  }
  SECTION("a shape nested 5000 levels deep: refused before it is built, at once") {
    const std::string shape = std::string(5000, '[') + "2" + std::string(5000, ']');
    write_raw_safetensors(f, R"({"a":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,8]}})", std::string(8, '\0'));
    const auto start = std::chrono::steady_clock::now();
    require_error(read, f, "nested deeper than 128 levels");
    require_error([&] { hooklens::read_safetensors_metadata(f); }, f, "nested deeper than 128 levels");
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2 * test::kSlowdown));
  }
  SECTION("100 KB values are cut in messages") {
    const std::string huge(100000, 'n');
    write_raw_safetensors(f, R"({")" + huge + R"(":{"dtype":")" + huge + R"(","shape":[2],"data_offsets":[0,8]}})",
                          std::string(8, '\0'));
    const std::string dtype = test::error_of(read);
    CHECK_THAT(dtype, Catch::Contains("unknown safetensors dtype"));
    CHECK(dtype.size() < f.string().size() + 200);
    write_raw_safetensors(f, R"({"a":{"dtype":"F32","shape":[")" + huge + R"("],"data_offsets":[0,8]}})",
                          std::string(8, '\0'));
    const std::string shape = test::error_of(read);
    CHECK_THAT(shape, Catch::Contains("not a non-negative integer"));
    CHECK(shape.size() < f.string().size() + 200);
  }
  SECTION("offsets out of range") {
    write_raw_safetensors(f, R"({"a":)" + entry_f32_2 + "}", std::string(4, '\0'));
    require_error(read, f, "outside the data section");
  }
  SECTION("begin after end") {
    write_raw_safetensors(f, R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", std::string(8, '\0'));
    require_error(read, f, "outside the data section");
  }
  SECTION("overlapping tensors") {
    write_raw_safetensors(f,
                          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          std::string(12, '\0'));
    require_error(read, f, "overlap");
  }
  SECTION("shape and offsets disagree") {
    write_raw_safetensors(f, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'));
    require_error(read, f, "different size");
  }
  SECTION("shape whose byte size overflows 64 bits") {
    write_raw_safetensors(f, R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})", "");
    require_error(read, f, "different size");
  }
  SECTION("unknown dtype") {
    write_raw_safetensors(f, R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", std::string(2, '\0'));
    require_error(read, f, "unknown safetensors dtype 'F8'");
  }
  SECTION("negative or fractional shape") {
    write_raw_safetensors(f, R"({"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}})", std::string(2, '\0'));
    require_error(read, f, "non-negative integer");
    write_raw_safetensors(f, R"({"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}})", std::string(2, '\0'));
    require_error(read, f, "non-negative integer");
  }
  SECTION("missing fields") {
    write_raw_safetensors(f, R"({"a":{"dtype":"U8","shape":[2]}})", std::string(2, '\0'));
    require_error(read, f, "needs dtype, shape and data_offsets");
  }
  SECTION("duplicate names") {
    write_raw_safetensors(f, R"({"a":)" + entry_f32_2 + R"(,"a":)" + entry_f32_2 + "}", std::string(8, '\0'));
    require_error(read, f, "appears twice");
  }
  SECTION("control characters in names stay out of the one-line message") {
    write_raw_safetensors(f, R"({"a\nb":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", std::string(2, '\0'));
    require_error(read, f, R"(tensor 'a\nb': unknown safetensors dtype)");  // escaped by brief_text
  }
  SECTION("a directory") { require_error([&] { hooklens::read_safetensors(tmp.path); }, tmp.path, "not a regular file"); }
  SECTION("metadata values must be strings") {
    write_raw_safetensors(f, R"({"__metadata__":{"n":1}})", "");
    require_error([&] { hooklens::read_safetensors_metadata(f); }, f, "not a string");
  }
  SECTION("gaps are allowed, empty tensors may share an offset") {
    write_raw_safetensors(f,
                          R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                          R"("e":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},)"
                          R"("b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                          std::string("\x07...\x01\x02..", 8));
    TensorMap t = hooklens::read_safetensors(f);
    CHECK(at::equal(t.at("a"), at::tensor(std::vector<std::int64_t>{1, 2}).to(at::kByte)));
    CHECK(t.at("b").item<std::uint8_t>() == 7);
    CHECK(t.at("e").sizes() == at::IntArrayRef{0, 5});
  }
}

TEST_CASE("pytorch_model.bin: truncated, garbage and legacy files are errors", "[weights][fixtures]") {
  TempDir tmp("bin");
  const fs::path f = tmp.path / "pytorch_model.bin";
  const auto read = [&] { hooklens::read_pytorch_bin(f); };
  SECTION("missing") { require_error(read, f, "cannot open"); }
  SECTION("first half of the fixture") {
    const std::string full = test::read_file(kFixtures / "tiny-neo-a" / "pytorch_model.bin");
    write_bytes(f, full.substr(0, full.size() / 2));
    require_error(read, f, "cannot read the archive");
  }
  SECTION("a directory") { require_error([&] { hooklens::read_pytorch_bin(tmp.path); }, tmp.path, "cannot open"); }
  SECTION("zip magic followed by garbage") {
    std::string junk = "PK\x03\x04";
    for (int i = 0; i < 5000; ++i) junk += static_cast<char>((i * 7919) & 0xff);
    write_bytes(f, junk);
    require_error(read, f, "cannot read the archive");
  }
  SECTION("not a zip") {
    write_bytes(f, "hello, this is not a checkpoint");
    require_error(read, f, "not a torch.save zip archive");
  }
  SECTION("empty") {
    write_bytes(f, "");
    require_error(read, f, "not a torch.save zip archive");
  }
  SECTION("safetensors passed as bin") {
    fs::copy_file(kFixtures / "tiny-neo-a" / "model.safetensors", f);
    require_error(read, f, "not a torch.save zip archive");
  }
}

nlohmann::json& plain_sink() {
  static nlohmann::json j;
  return j;
}

// The Python side saves checkpoints with torch.save and writes the expected tensors with a tiny
// independent safetensors writer; it also checks a file written by our writer.
static const char* kPythonScript = R"PY(
import collections, io, json, os, pickle, struct, sys
import torch
d = sys.argv[1]
NAMES = {torch.float64: 'F64', torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16',
         torch.int64: 'I64', torch.int32: 'I32', torch.int16: 'I16', torch.int8: 'I8',
         torch.uint8: 'U8', torch.bool: 'BOOL'}
DTYPES = {v: k for k, v in NAMES.items()}

def raw(t):
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b''

def write_st(path, tensors):
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        b = raw(t)
        header[k] = {'dtype': NAMES[t.dtype], 'shape': list(t.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))

def read_st(path):
    data = open(path, 'rb').read()
    n = struct.unpack('<Q', data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop('__metadata__', {})
    out = {}
    for k, e in header.items():
        b, end = e['data_offsets']
        buf = bytearray(data[8 + n + b: 8 + n + end])
        t = torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.zeros(0, dtype=torch.uint8)
        out[k] = t.view(DTYPES[e['dtype']]).reshape(e['shape'])
    return out, meta

torch.manual_seed(0)
base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
tied = torch.randn(7, 3)
mixed = collections.OrderedDict()
mixed['f16'] = torch.randn(3, 4).half()
mixed['bf16'] = torch.randn(5).bfloat16()
mixed['f64'] = torch.randn(2, 2, dtype=torch.float64)
mixed['view'] = base[1:, ::2]
mixed['transposed'] = base.t()
mixed['row'] = base[3]
mixed['wte'] = tied
mixed['lm_head'] = tied
mixed['param'] = torch.nn.Parameter(torch.randn(2, 2))
mixed['ids'] = torch.tensor([-5, 0, 2**40])
mixed['i32'] = torch.tensor([1, -2], dtype=torch.int32)
mixed['i16'] = torch.tensor([3], dtype=torch.int16)
mixed['i8'] = torch.tensor([-4], dtype=torch.int8)
mixed['u8'] = torch.arange(256).to(torch.uint8)
mixed['mask'] = torch.tensor([True, False, True])
mixed['scalar'] = torch.tensor(1.5)
mixed['empty'] = torch.zeros(0, 3)
torch.save(mixed, os.path.join(d, 'mixed.bin'))
torch.save(mixed, os.path.join(d, 'mixed_p4.bin'), pickle_protocol=4)
write_st(os.path.join(d, 'mixed.expect.safetensors'), {k: v.detach().clone() for k, v in mixed.items()})

module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Embedding(5, 2))
sd = module.state_dict()
assert hasattr(sd, '_metadata')
torch.save(sd, os.path.join(d, 'module.bin'))
write_st(os.path.join(d, 'module.expect.safetensors'), dict(sd))

torch.save({'x': torch.ones(2)}, os.path.join(d, 'legacy.bin'), _use_new_zipfile_serialization=False)

# Sharded pytorch_model.bin from the fixture, plus its index.
sharded = os.path.join(d, 'sharded')
os.makedirs(sharded)
full = torch.load(sys.argv[2])
names = list(full)
shards = {'pytorch_model-00001-of-00002.bin': names[:len(names) // 2],
          'pytorch_model-00002-of-00002.bin': names[len(names) // 2:]}
weight_map = {}
for fname, keys in shards.items():
    torch.save({k: full[k].clone() for k in keys}, os.path.join(sharded, fname))
    weight_map.update({k: fname for k in keys})
json.dump({'metadata': {}, 'weight_map': weight_map}, open(os.path.join(sharded, 'pytorch_model.bin.index.json'), 'w'))

# Hand-made archives: a real zip with a crafted pickle, to check the reader's own validation.
class Stub:
    def __init__(self, numel, key='0'):
        self.numel, self.key = numel, key
class Rebuild:
    def __init__(self, *args):
        self.args = args
    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args + (False, collections.OrderedDict()))
class Evil:
    def __reduce__(self):
        return (eval, ('1+1',))
class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Stub):
            return ('storage', torch.FloatStorage, obj.key, 'cpu', obj.numel)
        return None
def craft(name, obj, data=struct.pack('<4f', 1, 2, 3, 4), pkl=None):
    if pkl is None:
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(obj)
        pkl = buf.getvalue()
    w = torch._C.PyTorchFileWriter(os.path.join(d, name))
    w.write_record('data.pkl', pkl, len(pkl))
    w.write_record('data/0', data, len(data))
    w.write_end_of_file()
craft('crafted_ok.bin', {'x': Rebuild(Stub(4), 1, (3,), (1,))})
assert torch.equal(torch.load(os.path.join(d, 'crafted_ok.bin'))['x'], torch.tensor([2., 3., 4.]))
craft('past_end.bin', {'x': Rebuild(Stub(4), 0, (5,), (1,))})
craft('huge_stride.bin', {'x': Rebuild(Stub(4), 0, (2, 2), (2**62, 1))})
craft('negative_stride.bin', {'x': Rebuild(Stub(4), 3, (2,), (-1,))})
craft('numel_mismatch.bin', {'x': Rebuild(Stub(100), 0, (4,), (1,))})
craft('missing_record.bin', {'x': Rebuild(Stub(4, '7'), 0, (4,), (1,))})
craft('not_a_dict.bin', [Rebuild(Stub(4), 0, (4,), (1,))])
craft('not_a_tensor.bin', {'x': 3})
craft('evil.bin', {'x': Evil()})
craft('underflow.bin', None, pkl=b'\x80\x02R.')
craft('bad_mark.bin', None, pkl=b'\x80\x02K\x01K\x02(\x86.')
craft('bad_memo.bin', None, pkl=b'\x80\x02h\x05.')
craft('cut_pickle.bin', None, pkl=b'\x80\x02X\xff\x00\x00\x00abc')
craft('many_values.bin', None, pkl=b'\x80\x02' + b')' * 5000000 + b'.')
craft('long_key.bin', {'x': Rebuild(Stub(4, 'k' * 500), 0, (4,), (1,))})
craft('expanded.bin', {'x': Rebuild(Stub(4), 1, (2**40, 3), (0, 1))})  # 3 * 2^40 elements viewing 3
craft('repeat.bin', {'wte': Rebuild(Stub(1, '0'), 0, (24000, 24000), (0, 0))}, data=struct.pack('<f', 1))
craft('overlap.bin', {'x': Rebuild(Stub(4), 0, (3, 2), (1, 1))})  # 6 elements from 4, no stride 0
craft('tiny_repeat.bin', {'x': Rebuild(Stub(4), 0, (2, 2), (0, 1))})  # repeats, but no more than stored
craft('rank.bin', {'x': Rebuild(Stub(4), 0, (1,) * 65, (1,) * 65)})
shared = {'n_head': 4, 'name': 'x' * 100}
craft('shared_config.bin', {'model': {'x': Rebuild(Stub(4), 0, (4,), (1,))}, 'a': shared, 'b': [shared, shared]})
# 60 levels, each a tuple holding the level below twice (the level on the stack and a BINGET of it,
# then MEMOIZE): 2^60 values if the reader expanded shared objects instead of keeping one of each.
dag = b')\x94' + b''.join(b'h%c\x86\x94' % i for i in range(60))
dag_pkl = b'\x80\x04}(X\x05\x00\x00\x00model}X\x0a\x00\x00\x00model_args' + dag + b'u.'
craft('dag.bin', None, pkl=dag_pkl)
# A list that holds itself twice: converted down to a depth limit it would still be 2^64 values.
craft('cycle.bin', None, pkl=b'\x80\x02}(X\x05\x00\x00\x00model}X\x01\x00\x00\x00c]q\x00h\x00ah\x00au.')
level = pickle.loads(dag_pkl)['model_args']
for _ in range(60):
    assert level[0] is level[1]
    level = level[0]
assert level == ()

# Zip-level variants of torch.save files: rewritten by Python's zipfile, or patched byte by byte.
import warnings, zipfile, zlib
def rewrite(src, dst, method, records=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for name, payload in records or [(i.filename, zin.read(i.filename)) for i in zin.infolist()]:
            zout.writestr(name, payload, compress_type=method)
mixed_bin = os.path.join(d, 'mixed.bin')
rewrite(mixed_bin, os.path.join(d, 'deflated.bin'), zipfile.ZIP_DEFLATED)
rewrite(mixed_bin, os.path.join(d, 'unaligned.bin'), zipfile.ZIP_STORED)  # zipfile does not align data
rewrite(mixed_bin, os.path.join(d, 'bzip2.bin'), zipfile.ZIP_BZIP2)
small = os.path.join(d, 'small.bin')
torch.save({'x': torch.arange(4, dtype=torch.float32)}, small)
small_records = [(i.filename, zipfile.ZipFile(small).read(i.filename)) for i in zipfile.ZipFile(small).infolist()]
rewrite(small, os.path.join(d, 'no_top_dir.bin'), zipfile.ZIP_STORED, [(n.split('/', 1)[1], b) for n, b in small_records])
with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # zipfile warns about the duplicate name, and writes it
    rewrite(small, os.path.join(d, 'duplicate.bin'), zipfile.ZIP_STORED, small_records + small_records[-1:])

def central_headers(data):
    """name -> offset of its central header (from the 32-bit end record: these files are small)."""
    end = data.rfind(b'PK\x05\x06')
    count, _, at = struct.unpack_from('<HII', data, end + 10)
    out = {}
    for _ in range(count):
        name_size, extra_size, comment_size = struct.unpack_from('<HHH', data, at + 28)
        out[data[at + 46:at + 46 + name_size].decode()] = at
        at += 46 + name_size + extra_size + comment_size
    return out
def patch(src, dst, edit):
    data = bytearray(open(src, 'rb').read())
    edit(data, central_headers(data))
    open(os.path.join(d, dst), 'wb').write(data)
def at_zip64_end(data, field):
    return data.rfind(b'PK\x06\x06') + field
storage_record = [n for n, _ in small_records if n.endswith('/data/0')][0]
pickle_record = [n for n, _ in small_records if n.endswith('/data.pkl')][0]
patch(small, 'cd_past_end.bin', lambda b, c: struct.pack_into('<Q', b, at_zip64_end(b, 48), len(b) + 100))
patch(small, 'entries_huge.bin', lambda b, c: struct.pack_into('<Q', b, at_zip64_end(b, 32), 2**40))
patch(small, 'locator_bad.bin', lambda b, c: struct.pack_into('<Q', b, b.rfind(b'PK\x06\x07') + 8, 2 * len(b)))
patch(os.path.join(d, 'unaligned.bin'), 'cd_past_end32.bin',
      lambda b, c: struct.pack_into('<I', b, b.rfind(b'PK\x05\x06') + 16, len(b) - 10))
patch(small, 'local_offset_bad.bin', lambda b, c: struct.pack_into('<I', b, c[storage_record] + 42, 3))
patch(small, 'record_past_cd.bin', lambda b, c: struct.pack_into('<II', b, c[storage_record] + 20, 2**31, 2**31))
patch(small, 'record_size_mismatch.bin', lambda b, c: struct.pack_into('<II', b, c[storage_record] + 20, 8, 8))
patch(small, 'stored_sizes_differ.bin', lambda b, c: struct.pack_into('<II', b, c[storage_record] + 20, 16, 32))
patch(small, 'encrypted.bin', lambda b, c: struct.pack_into('<H', b, c[storage_record] + 8, 1))
patch(small, 'method_mismatch.bin', lambda b, c: struct.pack_into('<H', b, c[storage_record] + 10, 8))
patch(small, 'bad_crc.bin', lambda b, c: struct.pack_into('<I', b, c[pickle_record] + 16, 12345))
patch(os.path.join(d, 'deflated.bin'), 'bomb.bin',
      lambda b, c: struct.pack_into('<I', b, c[[n for n in c if n.endswith('/data.pkl')][0]] + 24, 0xffffff00))

def write_zip64(path, records, extra_size=24):
    """A zip whose 32-bit sizes and offsets are all saturated: the values live in zip64 fields."""
    out, central = bytearray(), bytearray()
    for name, payload in records:
        raw, offset, crc = name.encode(), len(out), zlib.crc32(payload)
        local_extra = struct.pack('<HHQQ', 1, 16, len(payload), len(payload))
        out += struct.pack('<IHHHHHIIIHH', 0x04034b50, 45, 0, 0, 0, 0, crc, 2**32 - 1, 2**32 - 1, len(raw),
                           len(local_extra)) + raw + local_extra + payload
        extra = struct.pack('<HHQQQ', 1, 24, len(payload), len(payload), offset)[:4 + extra_size]
        extra = extra[:2] + struct.pack('<H', extra_size) + extra[4:]
        central += struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 45, 45, 0, 0, 0, 0, crc, 2**32 - 1, 2**32 - 1,
                               len(raw), len(extra), 0, 0, 0, 0, 2**32 - 1) + raw + extra
    directory = len(out)
    out += central
    zip64_end = len(out)
    out += struct.pack('<IQHHIIQQQQ', 0x06064b50, 44, 45, 45, 0, 0, len(records), len(records), len(central), directory)
    out += struct.pack('<IIQI', 0x07064b50, 0, zip64_end, 1)
    out += struct.pack('<IHHHHIIH', 0x06054b50, 0xffff, 0xffff, 0xffff, 0xffff, 2**32 - 1, 2**32 - 1, 0)
    open(os.path.join(d, path), 'wb').write(out)
write_zip64('zip64.bin', small_records)
write_zip64('zip64_short_extra.bin', small_records, extra_size=16)

# A file written by hooklens: check it with this independent reader.
ours = os.path.join(d, 'ours.safetensors')
if os.path.exists(ours):
    t, meta = read_st(ours)
    assert meta == {'format': 'pt'}, meta
    assert list(t) == ['t', 'b', 'z', 'e'], list(t)
    assert torch.equal(t['t'], torch.arange(12, dtype=torch.float32).reshape(3, 4).t())
    assert torch.equal(t['b'], torch.arange(5).to(torch.bfloat16))
    assert t['z'].shape == () and t['z'].item() == -7
    assert t['e'].shape == (0, 2) and t['e'].dtype == torch.float16
    open(os.path.join(d, 'ours.ok'), 'w').close()
)PY";

// Runs the script once per process (Catch re-enters a test case for every SECTION); empty path
// when /usr/bin/python3 has no torch.
const fs::path& python_outputs() {
  static const std::unique_ptr<TempDir> dir = []() -> std::unique_ptr<TempDir> {
    if (!test::python_has("torch")) return nullptr;
    auto tmp = std::make_unique<TempDir>("python");
    const fs::path& d = tmp->path;
    hooklens::write_safetensors(d / "ours.safetensors",
                                {{"t", at::arange(12, at::kFloat).reshape({3, 4}).t()},
                                 {"b", at::arange(5, at::kLong).to(at::kBFloat16)},
                                 {"z", at::scalar_tensor(-7, at::kLong)},
                                 {"e", at::zeros({0, 2}, at::kHalf)}},
                                {{"format", "pt"}});
    write_bytes(d / "script.py", kPythonScript);
    const std::string cmd = "/usr/bin/python3 '" + (d / "script.py").string() + "' '" + d.string() + "' '" +
                            (kFixtures / "tiny-neo-a" / "pytorch_model.bin").string() + "'";
    REQUIRE(std::system(cmd.c_str()) == 0);
    return tmp;
  }();
  static const fs::path none;
  return dir ? dir->path : none;
}

TEST_CASE("pytorch_model.bin: files saved by PyTorch", "[weights][fixtures]") {
  const fs::path& d = python_outputs();
  if (d.empty()) {
    test::skip("/usr/bin/python3 with torch is not available, so no checkpoints can be made");
    return;
  }
  const fs::path fixture_bin = kFixtures / "tiny-neo-a" / "pytorch_model.bin";

  SECTION("our safetensors file reads back in Python") { CHECK(fs::exists(d / "ours.ok")); }

  SECTION("dtypes, views with offsets and strides, tied weights, parameters, 0-d and empty") {
    const TensorMap expected = hooklens::read_safetensors(d / "mixed.expect.safetensors");
    for (const char* name : {"mixed.bin", "mixed_p4.bin"}) {
      INFO("file " << name);
      const TensorMap got = hooklens::read_pytorch_bin(d / name);
      require_same(got, expected);
      // Views stay views of one mapped storage: tied weights, offsets and strides, no copies.
      CHECK(got.at("lm_head").data_ptr() == got.at("wte").data_ptr());
      const at::Tensor& view = got.at("view");
      CHECK_FALSE(view.is_contiguous());
      CHECK(view.storage_offset() == 10);
      CHECK(view.strides() == at::IntArrayRef{10, 2});
      CHECK(view.storage().data() == got.at("transposed").storage().data());
      CHECK(view.storage().data() == got.at("row").storage().data());
      for (const auto& [key, t] : got) {
        INFO("tensor " << key);
        if (t.numel() > 0) CHECK(in_mapping_of(t, d / name));
        CHECK_FALSE(t.requires_grad());
      }
    }
  }

  SECTION("nn.Module state dict with _metadata") {
    const TensorMap got = hooklens::read_pytorch_bin(d / "module.bin");
    require_same(got, hooklens::read_safetensors(d / "module.expect.safetensors"));
    CHECK(got.at("1.num_batches_tracked").scalar_type() == at::kLong);
    CHECK(got.at("1.num_batches_tracked").dim() == 0);
  }

  SECTION("legacy format") {
    require_error([&] { hooklens::read_pytorch_bin(d / "legacy.bin"); }, d / "legacy.bin", "legacy torch.save format");
  }

  SECTION("crafted archives") {
    const TensorMap ok = hooklens::read_pytorch_bin(d / "crafted_ok.bin");
    CHECK(at::equal(ok.at("x"), at::arange(2, 5, at::kFloat)));
    // A view may repeat elements of its storage (stride 0) as long as it has no more elements than
    // the storage: a copy of it (contiguous, a dtype conversion) is then no larger than the file.
    const at::Tensor tiny_repeat = hooklens::read_pytorch_bin(d / "tiny_repeat.bin").at("x");
    CHECK(tiny_repeat.strides() == at::IntArrayRef{0, 1});
    CHECK(at::equal(tiny_repeat.contiguous(), at::tensor({1.f, 2.f, 1.f, 2.f}).reshape({2, 2})));
    // Plain values the pickle shares (one dict under two keys) are read as copies.
    nlohmann::json plain;
    hooklens::read_pytorch_checkpoint(d / "shared_config.bin", nullptr, &plain);
    CHECK(plain.at("a").at("n_head") == 4);
    CHECK(plain.at("b").at(1) == plain.at("a"));
    const std::pair<const char*, const char*> bad[] = {
        {"past_end.bin", "past its storage"},
        {"huge_stride.bin", "past its storage"},
        {"negative_stride.bin", "negative size or stride"},
        {"numel_mismatch.bin", "not 100 elements"},
        {"missing_record.bin", "no record 'data/7'"},
        {"not_a_dict.bin", "not a state dict"},
        {"not_a_tensor.bin", "not a tensor"},
        {"evil.bin", "eval which a state dict does not use"},
        {"underflow.bin", "stack underflow"},
        {"bad_mark.bin", "stack underflow"},
        {"bad_memo.bin", "memo entry 5"},
        {"cut_pickle.bin", "ends early"},
        {"many_values.bin", "too many values"},
        // More elements than the storage holds: refused before anything could copy them.
        {"expanded.bin", "tensor of shape [1099511627776, 3] from a storage of only 4 elements"},
        {"repeat.bin", "tensor of shape [24000, 24000] from a storage of only 1 elements"},
        {"overlap.bin", "overlapping strides"},
        {"rank.bin", "more than 64 dimensions"},
        {"dag.bin", "'model' is a dict, not a tensor"},
    };
    for (const auto& [name, fragment] : bad) require_error([&] { hooklens::read_pytorch_bin(d / name); }, d / name, fragment);
  }

  SECTION("an object shared at every level of 60 is one object: refused in well under a second") {
    // Expanded into JSON, the plain values would be 2^60 values; the budget stops the copies.
    const auto start = std::chrono::steady_clock::now();
    require_error([&] { hooklens::read_pytorch_checkpoint(d / "dag.bin", nullptr, &plain_sink()); }, d / "dag.bin",
                  "plain values expand to more than 64 MiB of JSON");
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5 * test::kSlowdown));
    require_error([&] { hooklens::read_pytorch_checkpoint(d / "cycle.bin", nullptr, &plain_sink()); }, d / "cycle.bin",
                  "plain values expand to more than 64 MiB of JSON");
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5 * test::kSlowdown));
    // Without `plain` nothing walks the values: the state dict under 'model' (empty) is read.
    std::string under;
    CHECK(hooklens::read_pytorch_checkpoint(d / "dag.bin", &under).empty());
    CHECK(under == "model");
  }

  SECTION("zip variants: deflated records are extracted, unaligned ones copied, zip64 fields read") {
    const TensorMap expected = hooklens::read_safetensors(d / "mixed.expect.safetensors");
    require_same(hooklens::read_pytorch_bin(d / "deflated.bin"), expected);
    const TensorMap unaligned = hooklens::read_pytorch_bin(d / "unaligned.bin");
    require_same(unaligned, expected);
    CHECK(unaligned.at("lm_head").data_ptr() == unaligned.at("wte").data_ptr());  // copied once, still shared
    const TensorMap zip64 = hooklens::read_pytorch_bin(d / "zip64.bin");
    CHECK(at::equal(zip64.at("x"), at::arange(4, at::kFloat)));
  }

  SECTION("hostile zip archives") {
    const std::pair<const char*, const char*> bad[] = {
        {"cd_past_end.bin", "reaches past the end records"},
        {"cd_past_end32.bin", "reaches past the end records"},
        {"entries_huge.bin", "claims 1099511627776 records"},
        {"locator_bad.bin", "no zip64 end record"},
        {"local_offset_bad.bin", "no local header at byte 3"},
        {"record_past_cd.bin", "reaches past the start of the central directory"},
        {"record_size_mismatch.bin", "has 8 bytes, not 4 elements of Float"},
        {"stored_sizes_differ.bin", "stored uncompressed but has 16 bytes stored and 32 extracted"},
        {"encrypted.bin", "is encrypted"},
        {"method_mismatch.bin", "disagree on the compression method"},
        {"bad_crc.bin", "fails its CRC check"},
        {"bomb.bin", "more than deflate can produce"},
        {"bzip2.bin", "compression method 12"},
        {"no_top_dir.bin", "is not inside a top directory"},
        {"duplicate.bin", "appears twice"},
        {"zip64_short_extra.bin", "zip64 extra field is too short"},
    };
    for (const auto& [name, fragment] : bad) require_error([&] { hooklens::read_pytorch_bin(d / name); }, d / name, fragment);
  }

  SECTION("names quoted from the file are cut to about 60 characters") {
    const std::string message = test::error_of([&] { hooklens::read_pytorch_bin(d / "long_key.bin"); });
    CHECK_THAT(message, Catch::Contains("no record 'data/kkkk") && Catch::Contains("...'"));
    CHECK(message.size() < (d / "long_key.bin").string().size() + 100);
  }

  SECTION("every truncation of an archive is an Error") {
    const std::string whole = test::read_file(d / "small.bin");
    const fs::path cut = d / "truncated.bin";
    for (std::size_t size = 0; size < whole.size(); ++size) {
      INFO("first " << size << " bytes");
      write_bytes(cut, whole.substr(0, size));
      CHECK_THROWS_AS(hooklens::read_pytorch_bin(cut), hooklens::Error);
    }
  }

  SECTION("damaged bytes anywhere give the data or an Error, never a crash") {
    const std::string whole = test::read_file(d / "small.bin");
    const fs::path damaged = d / "damaged.bin";
    std::mt19937 random(7);
    int read = 0, refused = 0;
    for (int i = 0; i < 1000; ++i) {
      std::string bytes = whole;
      for (int k = 0; k <= i % 3; ++k) bytes[random() % bytes.size()] ^= static_cast<char>(1 + random() % 255);
      write_bytes(damaged, bytes);
      try {
        hooklens::read_pytorch_bin(damaged);
        ++read;
      } catch (const hooklens::Error&) {
        ++refused;
      }
    }
    CHECK(read > 0);  // damage inside the tensor data goes unnoticed: storages are not CRC-checked
    CHECK(refused > 0);
  }

  SECTION("sharded pytorch_model.bin") {
    require_same(hooklens::load_hf_weights(d / "sharded"), hooklens::read_pytorch_bin(fixture_bin));
  }
}

namespace {

// A field of /proc/self/status in KiB (VmRSS, RssAnon, RssFile).
std::int64_t status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  FAIL("no " << field << " in /proc/self/status");
  return 0;
}

}  // namespace

TEST_CASE("pytorch_model.bin: loading a large file reads no tensor data; the values are right", "[weights][fixtures]") {
  if (!test::python_has("torch")) {
    test::skip("/usr/bin/python3 with torch is not available, so no checkpoint can be made");
    return;
  }
  TempDir tmp("large");
  const fs::path file = tmp.path / "large.bin";
  constexpr std::int64_t kRows = 4096, kCols = 4096, kTensors = 4;  // 4 x 64 MiB of float32
  write_bytes(tmp.path / "make.py", R"PY(
import collections, sys, torch
sd = collections.OrderedDict()
for i in range(4):
    sd[f'w{i}'] = torch.arange(4096 * 4096, dtype=torch.float32).reshape(4096, 4096) * (i + 1)
sd['tied'] = sd['w0']
sd['w1_t'] = sd['w1'].t()
torch.save(sd, sys.argv[1])
)PY");
  REQUIRE(test::run_python(tmp.path / "make.py", "'" + file.string() + "'", tmp.path / "log") == 0);
  const auto file_mib = static_cast<std::int64_t>(fs::file_size(file) >> 20);
  REQUIRE(file_mib >= 256);
  hooklens::read_pytorch_bin(kFixtures / "tiny-neo-a" / "pytorch_model.bin");  // first-use allocations

  const std::int64_t rss_before = status_kib("VmRSS"), anon_before = status_kib("RssAnon");
  const TensorMap got = hooklens::read_pytorch_bin(file);
  const std::int64_t rss_growth_mib = (status_kib("VmRSS") - rss_before) >> 10;
  INFO("file " << file_mib << " MiB, RSS grew by " << rss_growth_mib << " MiB while loading");
  if (!test::kSanitized) CHECK(rss_growth_mib < 16);  // resource_bounds.h: not under ASan
  REQUIRE(got.size() == kTensors + 2);
  for (const auto& [name, t] : got) {
    INFO("tensor " << name);
    CHECK(in_mapping_of(t, file));
  }
  CHECK(got.at("tied").data_ptr() == got.at("w0").data_ptr());
  CHECK(got.at("w1_t").strides() == at::IntArrayRef{1, kCols});

  // Every value, compared a slice at a time (the expected slices stay small): reading them pages in
  // the file, but nothing is copied to the heap.
  constexpr std::int64_t kSliceRows = 256;
  for (std::int64_t i = 0; i < kTensors; ++i) {
    const at::Tensor& t = got.at("w" + std::to_string(i));
    for (std::int64_t r = 0; r < kRows; r += kSliceRows) {
      const at::Tensor expected =
          at::arange(r * kCols, (r + kSliceRows) * kCols, at::kFloat).reshape({kSliceRows, kCols}).mul(double(i + 1));
      if (!at::equal(t.narrow(0, r, kSliceRows), expected)) FAIL("w" << i << " differs in rows " << r << "+");
    }
  }
  CHECK(at::equal(got.at("w1_t").t(), got.at("w1")));
  const std::int64_t anon_growth_mib = (status_kib("RssAnon") - anon_before) >> 10;
  INFO("anonymous memory grew by " << anon_growth_mib << " MiB after reading every value");
  // Under ASan the quarantine keeps up to 256 MiB of the freed expected slices resident.
  if (!test::kSanitized) CHECK(anon_growth_mib < 32);
}

TEST_CASE("load_hf_weights: formats, priority, shards and errors", "[weights][fixtures]") {
  TempDir tmp("hf");
  const fs::path neo = kFixtures / "tiny-neo-a";
  const TensorMap st = hooklens::read_safetensors(neo / "model.safetensors");

  SECTION("the fixture directory prefers model.safetensors") {
    const TensorMap got = hooklens::load_hf_weights(neo);
    CHECK(got.count("lm_head.weight") == 0);
    require_same(got, st);
  }
  SECTION("pytorch_model.bin alone") {
    fs::copy_file(neo / "pytorch_model.bin", tmp.path / "pytorch_model.bin");
    CHECK(hooklens::load_hf_weights(tmp.path).count("lm_head.weight") == 1);
  }
  SECTION("missing, empty and weightless directories") {
    require_error([&] { hooklens::load_hf_weights(tmp.path / "nope"); }, tmp.path / "nope", "does not exist");
    require_error([&] { hooklens::load_hf_weights(tmp.path); }, tmp.path,
                  "looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
                  "pytorch_model.bin.index.json");
    write_bytes(tmp.path / "config.json", "{}");
    require_error([&] { hooklens::load_hf_weights(tmp.path); }, tmp.path, "no weights found");
  }

  SECTION("sharded safetensors") {
    std::vector<std::pair<std::string, at::Tensor>> shard1, shard2;
    std::string index = R"({"metadata": {"total_size": 0}, "weight_map": {)";
    std::size_t i = 0;
    for (const auto& [name, t] : st) {
      const bool first = i++ % 2 == 0;
      (first ? shard1 : shard2).emplace_back(name, t);
      index += (i > 1 ? "," : "") + ("\"" + name + "\": \"model-0000" + (first ? "1" : "2") + "-of-00002.safetensors\"");
    }
    index += "}}";
    hooklens::write_safetensors(tmp.path / "model-00001-of-00002.safetensors", shard1);
    hooklens::write_safetensors(tmp.path / "model-00002-of-00002.safetensors", shard2);
    const fs::path index_file = tmp.path / "model.safetensors.index.json";
    write_bytes(index_file, index);
    require_same(hooklens::load_hf_weights(tmp.path), st);

    SECTION("index naming a missing shard") {
      fs::remove(tmp.path / "model-00002-of-00002.safetensors");
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, index_file, "does not exist");
    }
    SECTION("tensor missing from its shard") {
      shard2.pop_back();
      hooklens::write_safetensors(tmp.path / "model-00002-of-00002.safetensors", shard2);
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, tmp.path / "model-00002-of-00002.safetensors",
                    "'" + st.rbegin()->first + "' is missing");
    }
    SECTION("shard outside the directory") {
      write_bytes(index_file, R"({"weight_map": {"a": "../model.safetensors"}})");
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, index_file, "not inside the model directory");
      write_bytes(index_file, R"({"weight_map": {"a": "/etc/passwd"}})");
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, index_file, "not inside the model directory");
    }
    SECTION("a shard that is a directory; names quoted from the index are cut") {
      fs::create_directory(tmp.path / "dir.safetensors");
      write_bytes(index_file, R"({"weight_map": {"a": "dir.safetensors"}})");
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, index_file, "'dir.safetensors' does not exist");
      const std::string long_name(300, 'x');
      write_bytes(index_file, R"({"weight_map": {"a": ")" + long_name + R"("}})");
      const std::string message = test::error_of([&] { hooklens::load_hf_weights(tmp.path); });
      CHECK(message.find(std::string(57, 'x') + "...'") != std::string::npos);
      CHECK(message.find(std::string(58, 'x')) == std::string::npos);
    }
    SECTION("the index file alone; each shard is read by its extension") {
      require_same(hooklens::load_weight_index(index_file), st);
      fs::copy_file(neo / "pytorch_model.bin", tmp.path / "extra.bin");
      std::string mixed = index;
      mixed.insert(mixed.rfind("}}"), R"(, "lm_head.weight": "extra.bin")");
      write_bytes(index_file, mixed);
      const TensorMap got = hooklens::load_weight_index(index_file);
      CHECK(got.size() == st.size() + 1);
      CHECK(at::equal(got.at("lm_head.weight"), st.at("transformer.wte.weight")));
    }
    SECTION("malformed index") {
      write_bytes(index_file, R"({"weights": {}})");
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, index_file, "weight_map");
      write_bytes(index_file, R"({"weight_map": {)");
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, index_file, "malformed JSON");
      write_bytes(index_file, R"({"weight_map": {"a": )" + std::string(5000, '[') + std::string(5000, ']') + "}}");
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, index_file, "nested deeper than 128 levels");
      write_bytes(index_file, R"({"weight_map": {"a": 3}})");
      require_error([&] { hooklens::load_hf_weights(tmp.path); }, index_file, "not a file name");
    }
  }
}

TEST_CASE("take_weight", "[weights]") {
  TensorMap w;
  w["a"] = at::arange(6, at::kLong).reshape({2, 3});
  w["b"] = at::ones({4}, at::kHalf);
  const void* a_data = w["a"].data_ptr();

  const at::Tensor a = hooklens::take_weight(w, "a", {2, 3}, "dir/x.safetensors");
  CHECK(a.data_ptr() == a_data);
  CHECK(a.scalar_type() == at::kLong);
  CHECK(w.count("a") == 0);
  CHECK_THROWS_WITH(hooklens::take_weight(w, "a", {2, 3}, "dir/x.safetensors"),
                    "dir/x.safetensors: missing tensor 'a'");
  CHECK_THROWS_WITH(hooklens::take_weight(w, "b", {2, 2}, "src"), "src: tensor 'b' has shape [4], expected [2, 2]");
  CHECK(w.count("b") == 1);  // a failed take leaves the map alone
  CHECK_THROWS_WITH(hooklens::take_weight(w, "b", {}, "src"), "src: tensor 'b' has shape [4], expected []");
  CHECK(hooklens::take_weight(w, "b", {4}, "src").scalar_type() == at::kHalf);
  CHECK(w.empty());
}
