// Heatmap textures: a matrix turned into colours once and uploaded to OpenGL, then drawn every frame
// for free. The cache is keyed by what the texture shows (selection, step, colour map), so a
// texture is rebuilt only when the selection changes.
#pragma once
#include "run_model.h"

#include <hooklens/drawing.h>

#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace view {

namespace drawing = hooklens::drawing;

// An OpenGL texture, deleted with the object.
class Texture {
 public:
  Texture() = default;
  Texture(const std::vector<drawing::Rgb>& pixels, int width, int height, drawing::Scale scale = {});
  Texture(Texture&& other) noexcept;
  Texture& operator=(Texture&& other) noexcept;
  Texture(const Texture&) = delete;
  Texture& operator=(const Texture&) = delete;
  ~Texture();

  void* imgui_id() const { return reinterpret_cast<void*>(std::size_t(id_)); }
  int width() const { return width_; }
  int height() const { return height_; }
  const drawing::Scale& scale() const { return scale_; }  // the values its colours stand for

 private:
  unsigned int id_ = 0;
  int width_ = 0, height_ = 0;
  drawing::Scale scale_;
};

// Which cells of a grid a texture shows, and how they are coloured.
// The scale runs from 0 to the largest value shown, or symmetric around zero (activations).
struct HeatmapSpec {
  int head = -1;     // -1: mean over heads
  int max_side = 0;  // > 0: downsample (mean of blocks) so no side exceeds this (thumbnails)
  const drawing::ColourMap* map = &drawing::kViridis;
  bool symmetric = false;
};

// A heatmap's colours, made on any thread; only the upload needs the OpenGL thread.
struct Image {
  int width = 1, height = 1;
  std::vector<drawing::Rgb> pixels{drawing::kMissing};
  drawing::Scale scale;
};
Image colour_image(const Grid& grid, const HeatmapSpec& spec);

class TextureCache {
 public:
  // The texture named `key`, built from `grid` with `spec` the first time it is asked for.
  const Texture& heatmap(const std::string& key, const Grid& grid, const HeatmapSpec& spec);
  const Texture& add(const std::string& key, const Image& image);
  // The texture named `key` if it was built, else null.
  const Texture* find(const std::string& key) const {
    const auto it = textures_.find(key);
    return it == textures_.end() ? nullptr : &it->second;
  }
  void erase(const std::string& key) { textures_.erase(key); }
  // A horizontal colour bar of `map` (for legends).
  const Texture& legend(const drawing::ColourMap& map);
  // Drops every texture (e.g. when the step or colour map changes and old keys are dead).
  void clear() { textures_.clear(); }
  std::size_t size() const { return textures_.size(); }

 private:
  std::map<std::string, Texture> textures_;
  std::map<std::string, Texture> legends_;  // never cleared: few, and drawn beside a heatmap reference
};

}  // namespace view
