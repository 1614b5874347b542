// The central directory of a zip archive held in memory (a memory-mapped torch.save file): which
// records it has, how each is stored and where its bytes lie, so that a stored record can be used
// in place. Nothing in the archive is trusted: every count, size and offset is checked against the
// archive's size before it is used.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hooklens {

struct ZipRecord {
  std::string name;
  std::uint16_t method = 0;       // 0 stored, 8 deflated (others are listed too; readers refuse them)
  std::uint64_t stored_size = 0;  // bytes in the archive (the compressed size)
  std::uint64_t size = 0;         // bytes once extracted
  std::uint64_t data_offset = 0;  // where the stored bytes start in the archive
  std::uint32_t crc32 = 0;
};

// Every record of the archive `data[0, size)`, in central-directory order, with data_offset taken
// from each record's local header. Understands zip64 (end record, locator, extra fields). Throws
// Error (without a file name: the caller adds it) when the archive is malformed or truncated, a
// record is encrypted or spans disks, a name appears twice, or a record's data reaches past the
// start of the central directory.
std::vector<ZipRecord> read_zip_directory(const unsigned char* data, std::uint64_t size);

// The CRC-32 that zip records carry (ISO-HDLC: reflected polynomial 0xEDB88320).
std::uint32_t zip_crc32(const unsigned char* data, std::uint64_t size);

}  // namespace hooklens
