// Reading a zip archive's central directory from memory (layout: PKWARE's APPNOTE.TXT, sections
// 4.3.6-4.3.16 and 4.5.3). Only what a reader of stored records needs: names, methods, sizes, CRCs
// and where each record's data starts. All integers are little-endian.
#include "zip_directory.h"

#include "hooklens/error.h"
#include <hooklens/message_text.h>

#include <fmt/format.h>

#include <array>
#include <cstring>
#include <unordered_set>

namespace hooklens {
namespace {

constexpr std::uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr std::uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr std::uint32_t kEndSignature = 0x06054b50;
constexpr std::uint32_t kZip64EndSignature = 0x06064b50;
constexpr std::uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr std::uint64_t kEndBytes = 22, kZip64LocatorBytes = 20, kZip64EndBytes = 56;
constexpr std::uint64_t kCentralHeaderBytes = 46, kLocalHeaderBytes = 30;
constexpr std::uint64_t kMaxCommentBytes = 0xffff;
constexpr std::uint16_t kZip64ExtraId = 0x0001;
constexpr std::uint32_t kSaturated32 = 0xffffffff;  // "the real value is in the zip64 extra field"
constexpr std::uint16_t kSaturated16 = 0xffff;

// Little-endian reads; callers check the range first with fits().
struct Bytes {
  const unsigned char* data;
  std::uint64_t size;

  bool fits(std::uint64_t at, std::uint64_t n) const { return at <= size && n <= size - at; }
  std::uint64_t read(std::uint64_t at, int n) const {
    std::uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | data[at + i];
    return v;
  }
  std::uint16_t u16(std::uint64_t at) const { return static_cast<std::uint16_t>(read(at, 2)); }
  std::uint32_t u32(std::uint64_t at) const { return static_cast<std::uint32_t>(read(at, 4)); }
  std::uint64_t u64(std::uint64_t at) const { return read(at, 8); }
};

[[noreturn]] void malformed(const std::string& what) { throw Error(what); }

// Where the central directory is, from the end record (and the zip64 end record when there is one).
struct Directory {
  std::uint64_t offset = 0, size = 0, entries = 0;
  std::uint64_t limit = 0;  // the central directory must end before this (the first end record)
};

// The end-of-central-directory record is the last thing in the file, followed only by its comment;
// the last signature whose comment fits is taken (a comment may itself contain the signature bytes).
std::uint64_t find_end_record(const Bytes& zip) {
  if (zip.size < kEndBytes) malformed(fmt::format("{} bytes are too few for a zip archive", zip.size));
  const std::uint64_t lowest = zip.size - kEndBytes > kMaxCommentBytes ? zip.size - kEndBytes - kMaxCommentBytes : 0;
  for (std::uint64_t at = zip.size - kEndBytes + 1; at-- > lowest;)
    if (zip.u32(at) == kEndSignature && zip.u16(at + 20) <= zip.size - kEndBytes - at) return at;
  malformed("no end-of-central-directory record (the file is truncated or not a zip archive)");
}

Directory locate_directory(const Bytes& zip) {
  const std::uint64_t end = find_end_record(zip);
  std::uint64_t disk = zip.u16(end + 4), directory_disk = zip.u16(end + 6);
  Directory d;
  d.entries = zip.u16(end + 10);
  d.size = zip.u32(end + 12);
  d.offset = zip.u32(end + 16);
  d.limit = end;
  // A zip64 locator sits right before the end record and points at the zip64 end record, whose
  // 64-bit fields replace the saturated 16/32-bit ones (torch.save always writes both).
  if (end >= kZip64LocatorBytes && zip.u32(end - kZip64LocatorBytes) == kZip64LocatorSignature) {
    const std::uint64_t locator = end - kZip64LocatorBytes;
    const std::uint64_t record = zip.u64(locator + 8);
    if (!zip.fits(record, kZip64EndBytes) || record + kZip64EndBytes > locator || zip.u32(record) != kZip64EndSignature)
      malformed(fmt::format("the zip64 locator points at byte {}, where there is no zip64 end record", record));
    disk = zip.u32(record + 16);
    directory_disk = zip.u32(record + 20);
    d.entries = zip.u64(record + 32);
    d.size = zip.u64(record + 40);
    d.offset = zip.u64(record + 48);
    d.limit = record;
  }
  if (disk != 0 || directory_disk != 0) malformed("multi-part (split) zip archives are not supported");
  if (d.offset > d.limit || d.size > d.limit - d.offset)
    malformed(fmt::format("the central directory ({} bytes at byte {}) reaches past the end records at byte {}", d.size,
                          d.offset, d.limit));
  if (d.entries > d.size / kCentralHeaderBytes)
    malformed(fmt::format("the central directory claims {} records but its {} bytes hold at most {}", d.entries, d.size,
                          d.size / kCentralHeaderBytes));
  return d;
}

// The zip64 extra field holds, in this order, the values whose header fields are saturated.
void read_zip64_extra(const Bytes& zip, std::uint64_t extra, std::uint64_t extra_size, ZipRecord& r,
                      std::uint64_t& local_offset, bool disk_saturated) {
  for (std::uint64_t at = extra; extra + extra_size - at >= 4;) {
    const std::uint16_t id = zip.u16(at), size = zip.u16(at + 2);
    if (size > extra + extra_size - at - 4)
      malformed(fmt::format("record '{}': an extra field runs past its header", brief_text(r.name)));
    if (id == kZip64ExtraId) {
      std::uint64_t field = at + 4;
      const std::uint64_t field_end = field + size;
      auto take64 = [&](std::uint64_t& value) {
        if (value != kSaturated32) return;
        if (field_end - field < 8) malformed(fmt::format("record '{}': its zip64 extra field is too short", brief_text(r.name)));
        value = zip.u64(field);
        field += 8;
      };
      take64(r.size);
      take64(r.stored_size);
      take64(local_offset);
      if (disk_saturated && field_end - field < 4)
        malformed(fmt::format("record '{}': its zip64 extra field is too short", brief_text(r.name)));
      return;
    }
    at += 4 + size;
  }
}

// Parses the central header at `at` (inside the directory) and the record's local header; returns
// the header's total size.
std::uint64_t read_record(const Bytes& zip, const Directory& d, std::uint64_t at, ZipRecord& r) {
  const std::uint64_t directory_end = d.offset + d.size;
  if (directory_end - at < kCentralHeaderBytes || zip.u32(at) != kCentralHeaderSignature)
    malformed(fmt::format("the central directory has no record header at byte {}", at));
  const std::uint16_t flags = zip.u16(at + 8);
  r.method = zip.u16(at + 10);
  r.crc32 = zip.u32(at + 16);
  r.stored_size = zip.u32(at + 20);
  r.size = zip.u32(at + 24);
  const std::uint64_t name_size = zip.u16(at + 28), extra_size = zip.u16(at + 30), comment_size = zip.u16(at + 32);
  const std::uint16_t disk = zip.u16(at + 34);
  std::uint64_t local_offset = zip.u32(at + 42);
  const std::uint64_t header_size = kCentralHeaderBytes + name_size + extra_size + comment_size;
  if (directory_end - at < header_size)
    malformed(fmt::format("the record header at byte {} runs past the end of the central directory", at));
  r.name.assign(reinterpret_cast<const char*>(zip.data + at + kCentralHeaderBytes), name_size);
  read_zip64_extra(zip, at + kCentralHeaderBytes + name_size, extra_size, r, local_offset, disk == kSaturated16);
  const std::string name = brief_text(r.name);
  if (flags & 0x1) malformed(fmt::format("record '{}' is encrypted", name));
  if (disk != 0 && disk != kSaturated16) malformed(fmt::format("record '{}' is on another disk", name));

  // Local headers come before the central directory; the data follows the local header's name and
  // extra field (whose lengths may differ from the central ones: torch.save pads to align data).
  if (local_offset > d.offset || d.offset - local_offset < kLocalHeaderBytes ||
      zip.u32(local_offset) != kLocalHeaderSignature)
    malformed(fmt::format("record '{}': no local header at byte {}", name, local_offset));
  const std::uint64_t local_name_size = zip.u16(local_offset + 26), local_extra_size = zip.u16(local_offset + 28);
  r.data_offset = local_offset + kLocalHeaderBytes + local_name_size + local_extra_size;
  if (r.data_offset > d.offset || r.stored_size > d.offset - r.data_offset)
    malformed(fmt::format("record '{}' ({} bytes at byte {}) reaches past the start of the central directory at byte {}",
                          name, r.stored_size, r.data_offset, d.offset));
  if (local_name_size != name_size ||
      std::memcmp(zip.data + local_offset + kLocalHeaderBytes, r.name.data(), name_size) != 0)
    malformed(fmt::format("record '{}': its local header names another record", name));
  if (zip.u16(local_offset + 8) != r.method)
    malformed(fmt::format("record '{}': its local and central headers disagree on the compression method", name));
  if (r.method == 0 && r.stored_size != r.size)
    malformed(fmt::format("record '{}' is stored uncompressed but has {} bytes stored and {} extracted", name,
                          r.stored_size, r.size));
  return header_size;
}

}  // namespace

std::vector<ZipRecord> read_zip_directory(const unsigned char* data, std::uint64_t size) {
  const Bytes zip{data, size};
  const Directory d = locate_directory(zip);
  std::vector<ZipRecord> records(d.entries);  // bounded by the directory's size (checked above)
  std::unordered_set<std::string> names;
  std::uint64_t at = d.offset;
  for (ZipRecord& r : records) {
    at += read_record(zip, d, at, r);
    if (!names.insert(r.name).second) malformed(fmt::format("record '{}' appears twice", brief_text(r.name)));
  }
  return records;
}

std::uint32_t zip_crc32(const unsigned char* data, std::uint64_t size) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xffffffffu;
  for (std::uint64_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

}  // namespace hooklens
