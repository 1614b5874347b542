// safetensors reader and writer. Layout: 8-byte little-endian header length N, N bytes of JSON
// header, then the raw little-endian tensor data; data_offsets are relative to the data section.
// The reader validates the whole header before it reads any tensor data.
#include "hooklens/safetensors.h"
#include "hooklens/mapped_file.h"

#include "hooklens/error.h"
#include "hooklens/json_read.h"
#include <hooklens/message_text.h>

#include <ATen/ops/empty.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this code copies raw bytes and needs a little-endian host"
#endif

namespace hooklens {
namespace {

constexpr std::uint64_t kMaxHeaderBytes = 100u * 1024u * 1024u;

struct DtypeName {
  c10::ScalarType type;
  const char* name;
};

constexpr DtypeName kDtypeNames[] = {
    {c10::ScalarType::Double, "F64"}, {c10::ScalarType::Float, "F32"},
    {c10::ScalarType::Half, "F16"},   {c10::ScalarType::BFloat16, "BF16"},
    {c10::ScalarType::Long, "I64"},   {c10::ScalarType::Int, "I32"},
    {c10::ScalarType::Short, "I16"},  {c10::ScalarType::Char, "I8"},
    {c10::ScalarType::Byte, "U8"},    {c10::ScalarType::Bool, "BOOL"},
};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// Messages stay one readable line even when a hostile header puts control characters or
// megabytes into a name.
[[noreturn]] void fail(const std::filesystem::path& file, const std::string& what) {
  throw Error(one_line(fmt::format("{}: {}", file.string(), what)));
}

std::string errno_text() { return std::strerror(errno); }

// ---- writer ------------------------------------------------------------------------------------

void write_all(std::FILE* f, const void* data, std::size_t size, const std::filesystem::path& file) {
  if (size != 0 && std::fwrite(data, 1, size, f) != size) fail(file, "write failed: " + errno_text());
}

}  // namespace

std::string safetensors_dtype_name(c10::ScalarType type) {
  for (const auto& entry : kDtypeNames)
    if (entry.type == type) return entry.name;
  throw Error(fmt::format("dtype {} cannot be stored in safetensors", c10::toString(type)));
}

c10::ScalarType parse_safetensors_dtype(const std::string& name) {
  for (const auto& entry : kDtypeNames)
    if (name == entry.name) return entry.type;
  throw Error(fmt::format("unknown safetensors dtype '{}'", brief_text(name)));
}

std::string safetensors_preamble(const std::vector<TensorLayout>& tensors,
                                 const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;  // ordered_json lookups are linear; shards may hold thousands
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second)
      throw Error(fmt::format("cannot write tensor name '{}' twice or as a reserved name", t.name));
    std::string dtype;
    try {
      dtype = safetensors_dtype_name(t.type);
    } catch (const Error& e) {
      throw Error(fmt::format("tensor '{}': {}", t.name, e.what()));
    }
    std::uint64_t bytes = c10::elementSize(t.type);
    for (const std::int64_t d : t.shape) {
      if (d < 0) throw Error(fmt::format("tensor '{}' has a negative dimension", t.name));
      bytes *= static_cast<std::uint64_t>(d);
    }
    header[t.name] = {{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception&) {
    throw Error("tensor names and metadata must be valid UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::uint64_t header_size = text.size();
  std::string preamble(reinterpret_cast<const char*>(&header_size), sizeof header_size);
  return preamble + text;
}

void write_safetensors(const std::filesystem::path& file,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Contiguous inputs are written from their own memory; only strided ones are copied.
  std::vector<at::Tensor> data;
  std::vector<TensorLayout> layout;
  data.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) fail(file, fmt::format("tensor '{}' is undefined", name));
    if (!tensor.device().is_cpu())
      fail(file, fmt::format("tensor '{}' is on {}, only CPU tensors can be written", name,
                             tensor.device().str()));
    data.push_back(tensor.contiguous());
    layout.push_back({name, tensor.scalar_type(), tensor.sizes().vec()});
  }
  std::string preamble;
  try {
    preamble = safetensors_preamble(layout, metadata);
  } catch (const Error& e) {
    fail(file, e.what());
  }
  FilePtr f(std::fopen(file.c_str(), "wb"));
  if (!f) fail(file, "cannot open for writing: " + errno_text());
  write_all(f.get(), preamble.data(), preamble.size(), file);
  for (const auto& t : data) write_all(f.get(), t.data_ptr(), t.nbytes(), file);
  if (std::fclose(f.release()) != 0) fail(file, "write failed: " + errno_text());
}

// ---- reader ------------------------------------------------------------------------------------

namespace {

struct Entry {
  std::string name;
  c10::ScalarType type;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;
};

struct Header {
  std::map<std::string, std::string> metadata;
  std::vector<Entry> entries;
  std::uint64_t data_start = 0;  // absolute file offset of the data section
};

// JSON integers only (a 2.0 or "2" is not a size); negative values are rejected by the caller.
bool json_uint(const nlohmann::json& v, std::uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<std::uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
    out = static_cast<std::uint64_t>(v.get<std::int64_t>());
    return true;
  }
  return false;
}

std::map<std::string, std::string> parse_metadata(const nlohmann::json& v,
                                                  const std::filesystem::path& file) {
  if (!v.is_object()) fail(file, "__metadata__ is not a JSON object");
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : v.items()) {
    if (!value.is_string()) fail(file, fmt::format("__metadata__ value '{}' is not a string", brief_text(key)));
    out[key] = value.get<std::string>();
  }
  return out;
}

Entry parse_entry(const std::string& name, const nlohmann::json& v, std::uint64_t data_size,
                  const std::filesystem::path& file) {
  const auto bad = [&](const std::string& what) { fail(file, fmt::format("tensor '{}': {}", brief_text(name), what)); };
  if (!v.is_object()) bad("header entry is not a JSON object");
  const auto dtype = v.find("dtype");
  const auto shape = v.find("shape");
  const auto offsets = v.find("data_offsets");
  if (dtype == v.end() || shape == v.end() || offsets == v.end())
    bad("header entry needs dtype, shape and data_offsets");
  if (!dtype->is_string()) bad("dtype is not a string");

  Entry e;
  e.name = name;
  try {
    e.type = parse_safetensors_dtype(dtype->get<std::string>());
  } catch (const Error& err) {
    bad(err.what());
  }
  if (!shape->is_array()) bad("shape is not an array");
  // numel * itemsize is computed in 128 bits so a hostile shape cannot overflow past the checks.
  unsigned __int128 bytes = c10::elementSize(e.type);
  for (const auto& dim : *shape) {
    std::uint64_t d = 0;
    if (!json_uint(dim, d) || d > static_cast<std::uint64_t>(INT64_MAX))
      bad(fmt::format("shape {} has a dimension that is not a non-negative integer", brief_json(*shape)));
    e.shape.push_back(static_cast<std::int64_t>(d));
    bytes *= d;
    if (bytes > data_size) bytes = static_cast<unsigned __int128>(data_size) + 1;  // saturate
  }
  if (!offsets->is_array() || offsets->size() != 2 || !json_uint((*offsets)[0], e.begin) ||
      !json_uint((*offsets)[1], e.end))
    bad(fmt::format("data_offsets {} is not a pair of non-negative integers", brief_json(*offsets)));
  if (e.begin > e.end || e.end > data_size)
    bad(fmt::format("data_offsets [{}, {}] lie outside the data section of {} bytes", e.begin, e.end,
                    data_size));
  if (bytes != e.end - e.begin)
    bad(fmt::format("data_offsets [{}, {}] hold {} bytes but dtype {} and shape {} need a different size",
                    e.begin, e.end, e.end - e.begin, dtype->get<std::string>(), brief_json(*shape)));
  return e;
}

// Gaps between tensors are allowed (they waste space but are harmless); overlaps are not.
void check_no_overlap(std::vector<Entry> entries, const std::filesystem::path& file) {
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  const Entry* previous = nullptr;
  for (const auto& e : entries) {
    if (e.begin == e.end) continue;
    if (previous && e.begin < previous->end)
      fail(file, fmt::format("tensors '{}' and '{}' overlap in the data section", brief_text(previous->name),
                             brief_text(e.name)));
    previous = &e;
  }
}

Header read_header(std::FILE* f, const std::filesystem::path& file) {
  if (fseeko(f, 0, SEEK_END) != 0) fail(file, "cannot seek: " + errno_text());
  const off_t end = ftello(f);
  if (end < 0) fail(file, "cannot tell the file size: " + errno_text());
  const auto file_size = static_cast<std::uint64_t>(end);
  if (file_size < 8) fail(file, fmt::format("too short for a safetensors file ({} bytes)", file_size));
  std::rewind(f);

  std::uint64_t header_size = 0;
  if (std::fread(&header_size, 1, 8, f) != 8) fail(file, "cannot read the header length");
  if (header_size > file_size - 8)
    fail(file, fmt::format("header length {} exceeds the file size {}", header_size, file_size));
  if (header_size > kMaxHeaderBytes)
    fail(file, fmt::format("header length {} is larger than the {} byte limit", header_size, kMaxHeaderBytes));
  std::string text(header_size, '\0');
  if (std::fread(text.data(), 1, text.size(), f) != text.size()) fail(file, "cannot read the header");

  // nlohmann keeps only the last of duplicate keys, so top-level keys are checked while parsing.
  std::set<std::string> names;
  std::string duplicate;
  const auto check_key = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& value) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && !names.insert(value.get<std::string>()).second)
      duplicate = value.get<std::string>();
    return true;
  };
  const nlohmann::json json = parse_json_text(text, file.string() + ": header", check_key);
  if (!json.is_object()) fail(file, "header is not a JSON object");
  if (!duplicate.empty()) fail(file, fmt::format("tensor name '{}' appears twice in the header", brief_text(duplicate)));

  Header header;
  header.data_start = 8 + header_size;
  const std::uint64_t data_size = file_size - header.data_start;
  for (const auto& [name, value] : json.items()) {
    if (name == "__metadata__")
      header.metadata = parse_metadata(value, file);
    else
      header.entries.push_back(parse_entry(name, value, data_size, file));
  }
  check_no_overlap(header.entries, file);
  return header;
}

FilePtr open_for_reading(const std::filesystem::path& file) {
  FilePtr f(std::fopen(file.c_str(), "rb"));
  if (!f) fail(file, "cannot open: " + errno_text());
  struct stat info {};
  if (fstat(fileno(f.get()), &info) != 0 || !S_ISREG(info.st_mode)) fail(file, "is not a regular file");
  return f;
}

}  // namespace

std::map<std::string, std::string> read_safetensors_metadata(const std::filesystem::path& file) {
  FilePtr f = open_for_reading(file);
  return read_header(f.get(), file).metadata;
}

std::vector<TensorLayout> read_safetensors_layout(const std::filesystem::path& file) {
  FilePtr f = open_for_reading(file);
  std::vector<TensorLayout> out;
  for (auto& e : read_header(f.get(), file).entries) out.push_back({std::move(e.name), e.type, std::move(e.shape)});
  return out;
}

TensorMap map_safetensors(const std::filesystem::path& file) {
  Header header;
  {
    FilePtr f = open_for_reading(file);
    header = read_header(f.get(), file);
  }
  // The header was validated against the file's size; mapping the same file checks it again (a file
  // that shrank in between fails in MappedFile::tensor, never by reading past the mapping).
  const auto mapped = MappedFile::open(file);
  TensorMap out;
  for (const auto& e : header.entries) out.emplace(e.name, mapped->tensor(header.data_start + e.begin, e.type, e.shape));
  return out;
}

TensorMap read_safetensors(const std::filesystem::path& file) {
  FilePtr f = open_for_reading(file);
  const Header header = read_header(f.get(), file);
  // Each tensor gets its own aligned buffer and is read straight into it: no second copy.
  TensorMap out;
  for (const auto& e : header.entries) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.type));
    const std::uint64_t size = e.end - e.begin;
    if (size != 0) {
      if (fseeko(f.get(), static_cast<off_t>(header.data_start + e.begin), SEEK_SET) != 0 ||
          std::fread(t.data_ptr(), 1, size, f.get()) != size)
        fail(file, fmt::format("cannot read the data of tensor '{}'", brief_text(e.name)));
    }
    out.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace hooklens
