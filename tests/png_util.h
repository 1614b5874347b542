// The tests' one PNG reader: stb_image decodes to 8-bit RGB. The stb implementation lives in
// libstb, which each test that includes this links (${STB_LIB}): nothing defines
// STB_IMAGE_IMPLEMENTATION.
#pragma once
// test_util.h brings Catch after ATen: Catch's CHECK must be the last definition (c10 defines one too).
#include "test_util.h"

#include <stb/stb_image.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

namespace test {

struct Png {
  int width = 0, height = 0;
  std::vector<std::uint8_t> rgb;  // row by row, 3 bytes a pixel

  std::array<int, 3> pixel(int x, int y) const {
    if (x < 0 || y < 0 || x >= width || y >= height)
      FAIL("pixel (" << x << ", " << y << ") is outside the " << width << "x" << height << " image");
    const std::uint8_t* p = &rgb[(std::size_t(y) * std::size_t(width) + std::size_t(x)) * 3];
    return {p[0], p[1], p[2]};
  }

  // Decodes PNG bytes; `what` names where they came from if they do not decode.
  static Png decode(const std::uint8_t* data, std::size_t size, const std::string& what) {
    int width = 0, height = 0, channels = 0;
    stbi_uc* pixels = stbi_load_from_memory(data, int(size), &width, &height, &channels, 3);
    return adopt(pixels, width, height, what);
  }

  static Png load(const std::filesystem::path& file) {
    int width = 0, height = 0, channels = 0;
    stbi_uc* pixels = stbi_load(file.string().c_str(), &width, &height, &channels, 3);
    return adopt(pixels, width, height, file.string());
  }

 private:
  // Copies and frees stb's pixels; fails the test, naming `what` and stb's reason, if there are none.
  static Png adopt(stbi_uc* pixels, int width, int height, const std::string& what) {
    INFO("decoding the PNG " << what << ": " << (pixels ? "ok" : stbi_failure_reason()));
    REQUIRE(pixels != nullptr);
    Png png;
    png.width = width;
    png.height = height;
    png.rgb.assign(pixels, pixels + std::size_t(width) * std::size_t(height) * 3);
    stbi_image_free(pixels);
    return png;
  }
};

inline std::size_t distinct_colours(const Png& png) {
  std::set<std::array<int, 3>> colours;
  for (int y = 0; y < png.height; ++y)
    for (int x = 0; x < png.width; ++x) colours.insert(png.pixel(x, y));
  return colours.size();
}

}  // namespace test
