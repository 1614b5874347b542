#include "textures.h"

#include <GL/gl.h>

#include <algorithm>
#include <cmath>

namespace view {

namespace {

constexpr std::size_t kMaxTextures = 4096;  // beyond this the cache starts again (e.g. after many steps)

// The value shown for cell (r, c): one head or the head mean.
float cell(const Grid& grid, int head, int r, int c) { return head < 0 ? grid.mean_at(r, c) : grid.at(head, r, c); }

// Mean of the finite values in the block of cells [r0, r1) x [c0, c1); NaN if none is finite.
float block_mean(const Grid& grid, int head, int r0, int r1, int c0, int c1) {
  double sum = 0;
  int n = 0;
  for (int r = r0; r < r1; ++r)
    for (int c = c0; c < c1; ++c) {
      const float v = cell(grid, head, r, c);
      if (std::isfinite(v)) sum += v, ++n;
    }
  return n ? float(sum / n) : NAN;
}

std::vector<drawing::Rgb> colour_cells(const Grid& grid, const HeatmapSpec& spec, const drawing::Scale& scale, int& width,
                                       int& height) {
  const int side = std::max(grid.rows, grid.cols);
  const int factor = spec.max_side > 0 && side > spec.max_side ? (side + spec.max_side - 1) / spec.max_side : 1;
  width = (grid.cols + factor - 1) / factor;
  height = (grid.rows + factor - 1) / factor;
  std::vector<drawing::Rgb> pixels;
  pixels.reserve(std::size_t(width) * height);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      const float v = factor == 1 ? cell(grid, spec.head, y, x)
                                  : block_mean(grid, spec.head, y * factor, std::min(grid.rows, (y + 1) * factor),
                                               x * factor, std::min(grid.cols, (x + 1) * factor));
      pixels.push_back(drawing::colour_of(scale, v));
    }
  return pixels;
}

// Keeps hi > lo, so colour_of never divides by zero.
drawing::Scale make_scale(double lo, double hi, const drawing::ColourMap& map) {
  if (!(hi > lo)) hi = lo + 1e-6;
  return {lo, hi, &map};
}

// 0 .. the largest finite value of the head (or head mean), or -m .. m for signed values.
drawing::Scale value_scale(const Grid& grid, const HeatmapSpec& spec) {
  double lo = 0, hi = 0;
  for (int r = 0; r < grid.rows; ++r)
    for (int c = 0; c < grid.cols; ++c) {
      const float v = cell(grid, spec.head, r, c);
      if (!std::isfinite(v)) continue;
      hi = std::max(hi, double(spec.symmetric ? std::fabs(v) : v));
      lo = std::min(lo, double(v));
    }
  return make_scale(spec.symmetric ? -hi : lo, hi, *spec.map);
}

}  // namespace

Texture::Texture(const std::vector<drawing::Rgb>& pixels, int width, int height, drawing::Scale scale)
    : width_(width), height_(height), scale_(scale) {
  GLuint id = 0;
  glGenTextures(1, &id);
  id_ = id;
  glBindTexture(GL_TEXTURE_2D, id);
  // Nearest: one cell is one block of screen pixels, however far the user zooms.
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_NEAREST);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_WRAP_S, GL_CLAMP_TO_EDGE);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_WRAP_T, GL_CLAMP_TO_EDGE);
  glPixelStorei(GL_UNPACK_ALIGNMENT, 1);
  glTexImage2D(GL_TEXTURE_2D, 0, GL_RGB, width, height, 0, GL_RGB, GL_UNSIGNED_BYTE, pixels.data());
}

Texture::Texture(Texture&& other) noexcept { *this = std::move(other); }

Texture& Texture::operator=(Texture&& other) noexcept {
  std::swap(id_, other.id_);
  std::swap(width_, other.width_);
  std::swap(height_, other.height_);
  std::swap(scale_, other.scale_);
  return *this;
}

Texture::~Texture() {
  if (id_) {
    const GLuint id = id_;
    glDeleteTextures(1, &id);
  }
}

Image colour_image(const Grid& grid, const HeatmapSpec& spec) {
  Image image;
  image.scale = value_scale(grid, spec);
  int width = 0, height = 0;
  auto pixels = colour_cells(grid, spec, image.scale, width, height);
  if (pixels.empty()) return image;  // an empty capture: one grey cell
  image.width = width, image.height = height, image.pixels = std::move(pixels);
  return image;
}

const Texture& TextureCache::heatmap(const std::string& key, const Grid& grid, const HeatmapSpec& spec) {
  if (auto it = textures_.find(key); it != textures_.end()) return it->second;
  return add(key, colour_image(grid, spec));
}

const Texture& TextureCache::add(const std::string& key, const Image& image) {
  if (textures_.size() >= kMaxTextures) textures_.clear();
  textures_.erase(key);
  return textures_.emplace(key, Texture(image.pixels, image.width, image.height, image.scale)).first->second;
}

const Texture& TextureCache::legend(const drawing::ColourMap& map) {
  const std::string key = map.name;
  if (auto it = legends_.find(key); it != legends_.end()) return it->second;
  std::vector<drawing::Rgb> pixels;
  for (int x = 0; x < 256; ++x) pixels.push_back(drawing::colour_at(map, x / 255.0));
  return legends_.emplace(key, Texture(pixels, 256, 1)).first->second;
}

}  // namespace view
