// Fuzz target: read_zip_directory (the central directory of a torch.save archive, zip64 too) and
// zip_crc32. The input is the archive. Beyond not crashing, what callers rely on is checked:
// every record's stored bytes lie inside the archive, names are unique, and the CRC agrees with
// a bit-at-a-time computation.
#include "fuzz_util.h"
#include "zip_directory.h"

#include <cstdint>
#include <set>

namespace {

std::uint32_t crc32_bitwise(const unsigned char* data, std::size_t size) {
  std::uint32_t crc = 0xffffffffu;
  for (std::size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::size_t head = std::min<std::size_t>(size, 256);  // the table against the definition
  if (hooklens::zip_crc32(data, head) != crc32_bitwise(data, head)) fuzz::violated("zip_crc32 differs");

  std::vector<hooklens::ZipRecord> records;
  try {
    records = hooklens::read_zip_directory(data, size);
  } catch (const hooklens::Error& e) {
    fuzz::check_refusal(e);
    return 0;
  }
  std::set<std::string> names;
  for (const hooklens::ZipRecord& r : records) {
    if (r.data_offset > size || r.stored_size > size - r.data_offset) fuzz::violated("a record reaches past the end");
    if (r.method == 0 && r.stored_size != r.size) fuzz::violated("a stored record's sizes differ");
    if (!names.insert(r.name).second) fuzz::violated("a name appears twice");
    if (r.method == 0) (void)hooklens::zip_crc32(data + r.data_offset, r.stored_size);
  }
  return 0;
}
