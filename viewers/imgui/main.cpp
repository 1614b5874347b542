// hooklens-view: the Dear ImGui viewer of run directories (see docs/viewer.md). This file holds the
// command line, the GLFW window and OpenGL context, the frame loop and the screenshot hook.
#include "live_model.h"
#include "panels.h"
#include "run_model.h"

#include <hooklens/error.h>
#include <hooklens/runtime.h>

#include <CLI/CLI.hpp>
#include <GLFW/glfw3.h>
#include <backends/imgui_impl_glfw.h>
#include <backends/imgui_impl_opengl3.h>
#include <fmt/format.h>
#include <imgui.h>
#include <stb/stb_image_write.h>

#include <cfloat>
#include <filesystem>
#include <iostream>
#include <regex>
#include <string>
#include <tuple>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct Options {
  std::string run;
  view::LiveOptions live;  // live mode when live.model is set
  std::string screenshot;
  int frames = 3;
  std::string select;
  std::string tab;
  int step = 0;
  double exit_after = 0;
  int width = 1280, height = 800;
};

// Frame-time statistics for the closing line: the average hides the stalls a user would notice.
class FrameTimes {
 public:
  void tick(double now) {
    if (last_ >= 0 && ++seen_ > kWarmup) {
      const double ms = (now - last_) * 1000;
      slowest_ = std::max(slowest_, ms);
      slow_ += ms > 1000.0 / 30;
      total_ += ms, ++counted_;
    }
    last_ = now;
  }
  std::string summary() const {
    if (counted_ == 0) return "too few frames to time";
    return fmt::format("{:.0f} fps; {} of {} frames slower than 1/30 s, slowest {:.0f} ms", 1000.0 * counted_ / total_,
                       slow_, counted_, slowest_);
  }

 private:
  static constexpr int kWarmup = 5;  // the first frames build fonts and textures
  double last_ = -1, slowest_ = 0, total_ = 0;
  int seen_ = 0, slow_ = 0, counted_ = 0;
};

// "L.H" (or "L.mean" for the head average) into the selection.
void apply_select(const std::string& text, view::Selection& sel) {
  static const std::regex pattern(R"((\d+)\.(\d+|mean))");
  std::smatch m;
  if (!std::regex_match(text, m, pattern))
    throw hooklens::UsageError(fmt::format("--select '{}': expected LAYER.HEAD, e.g. 2.1 (or 2.mean)", text));
  sel.layer = std::stoi(m[1]);
  if (m[2] == "mean") sel.average = true;
  else sel.head = std::stoi(m[2]);
}

// The window with an OpenGL 3.2 core context; throws Error when no display is available.
GLFWwindow* open_window(const Options& opt) {
  glfwSetErrorCallback([](int code, const char* what) { std::cerr << "hooklens-view: glfw " << code << ": " << what << "\n"; });
  if (!glfwInit()) throw hooklens::Error("cannot initialise GLFW (is DISPLAY set? under CI use xvfb-run)");
  glfwWindowHint(GLFW_CONTEXT_VERSION_MAJOR, 3);
  glfwWindowHint(GLFW_CONTEXT_VERSION_MINOR, 2);
  glfwWindowHint(GLFW_OPENGL_PROFILE, GLFW_OPENGL_CORE_PROFILE);
  glfwWindowHint(GLFW_OPENGL_FORWARD_COMPAT, GL_TRUE);
  glfwWindowHint(GLFW_SCALE_TO_MONITOR, GLFW_TRUE);
  GLFWwindow* window = glfwCreateWindow(opt.width, opt.height, "hooklens-view", nullptr, nullptr);
  if (!window) {
    glfwTerminate();
    throw hooklens::Error("cannot open a window with OpenGL 3.2 (is DISPLAY set? under CI use xvfb-run)");
  }
  glfwMakeContextCurrent(window);
  glfwSwapInterval(opt.screenshot.empty() ? 1 : 0);  // screenshots render as fast as they can
  return window;
}

// A readable font at the monitor's scale: DejaVu Sans if installed, else ImGui's built-in one.
void setup_fonts(GLFWwindow* window) {
  float xscale = 1, yscale = 1;
  glfwGetWindowContentScale(window, &xscale, &yscale);
  const float scale = std::max(1.0f, std::max(xscale, yscale));
  ImGuiIO& io = ImGui::GetIO();
  const fs::path dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
  std::error_code ec;
  if (fs::exists(dejavu, ec)) {
    // Tokens are any text: Latin, Greek, Cyrillic, general punctuation and U+FFFD (the replacement
    // character of a byte token that is not UTF-8 on its own), as far as DejaVu Sans has them.
    static ImVector<ImWchar> ranges;
    ImFontGlyphRangesBuilder builder;
    builder.AddRanges(io.Fonts->GetGlyphRangesDefault());
    builder.AddRanges(io.Fonts->GetGlyphRangesCyrillic());
    static const ImWchar more[] = {0x0370, 0x03FF, 0x2000, 0x206F, 0x2190, 0x21FF, 0xFFFD, 0xFFFD, 0};
    builder.AddRanges(more);
    builder.BuildRanges(&ranges);
    io.Fonts->AddFontFromFileTTF(dejavu.c_str(), 15.0f * scale, nullptr, ranges.Data);
  } else {
    ImFontConfig config;
    config.SizePixels = 13.0f * scale;
    io.Fonts->AddFontDefault(&config);
  }
  ImGui::GetStyle().ScaleAllSizes(scale);
}

// The back buffer as a PNG (rows flipped: OpenGL's origin is bottom-left).
void write_screenshot(const std::string& file, int width, int height) {
  std::vector<unsigned char> pixels(std::size_t(width) * height * 3);
  glPixelStorei(GL_PACK_ALIGNMENT, 1);
  glReadBuffer(GL_BACK);
  glReadPixels(0, 0, width, height, GL_RGB, GL_UNSIGNED_BYTE, pixels.data());
  std::vector<unsigned char> flipped(pixels.size());
  const std::size_t row = std::size_t(width) * 3;
  for (int y = 0; y < height; ++y) std::copy_n(&pixels[std::size_t(height - 1 - y) * row], row, &flipped[std::size_t(y) * row]);
  if (!stbi_write_png(file.c_str(), width, height, 3, flipped.data(), int(row)))
    throw hooklens::Error(fmt::format("{}: cannot write the screenshot", file));
}

// What the viewer shows: the live model (loaded before any window opens, so a slow load shows on
// the terminal rather than as a frozen window, and a wrong --model or prompt ends the viewer with
// status 1 or 2), or the run directory (a damaged run becomes a viewer that shows the error).
std::unique_ptr<view::PanelModel> open_data(const Options& opt, std::string& error) {
  if (!opt.live.model.empty()) {
    std::cerr << "hooklens-view: loading " << opt.live.model.string() << " ...\n";
    return std::make_unique<view::LiveModel>(opt.live);
  }
  try {
    return std::make_unique<view::RunModel>(opt.run);
  } catch (const std::exception& e) {
    error = e.what();
    return nullptr;
  }
}

int run(const Options& opt) {
  view::Selection sel;
  sel.step = opt.step;
  sel.tab = opt.tab;
  if (!opt.select.empty()) apply_select(opt.select, sel);
  std::string error;
  std::unique_ptr<view::PanelModel> data = open_data(opt, error);
  GLFWwindow* window = open_window(opt);
  IMGUI_CHECKVERSION();
  ImGui::CreateContext();
  ImGui::GetIO().IniFilename = nullptr;  // the layout is fixed; nothing to save
  ImGui::StyleColorsDark();
  setup_fonts(window);
  ImGui_ImplGlfw_InitForOpenGL(window, true);
  ImGui_ImplOpenGL3_Init("#version 150");
  {
    view::Viewer viewer(std::move(data), error, sel);  // owns GL textures: destroyed before the context
    glfwSetWindowTitle(window, viewer.window_title().c_str());
    const double start = glfwGetTime();
    // Screenshot mode waits for the thumbnails (built one layer per frame), within reason.
    const int max_frames = opt.frames + 10000;
    int frames = 0;
    FrameTimes times;
    for (int frame = 1; !glfwWindowShouldClose(window); ++frame) {
      frames = frame;
      times.tick(glfwGetTime());
      glfwPollEvents();
      ImGui_ImplOpenGL3_NewFrame();
      ImGui_ImplGlfw_NewFrame();
      // Screenshots do not depend on where the pointer happens to be (no hover tooltips).
      if (!opt.screenshot.empty()) ImGui::GetIO().MousePos = {-FLT_MAX, -FLT_MAX};
      ImGui::NewFrame();
      viewer.frame();
      ImGui::Render();
      int fb_w = 0, fb_h = 0;
      glfwGetFramebufferSize(window, &fb_w, &fb_h);
      glViewport(0, 0, fb_w, fb_h);
      glClearColor(0.1f, 0.1f, 0.12f, 1);
      glClear(GL_COLOR_BUFFER_BIT);
      ImGui_ImplOpenGL3_RenderDrawData(ImGui::GetDrawData());
      // Live mode screenshots the finished generation (the thumbnails then built), whatever --frames says.
      const bool ready = viewer.idle() && !viewer.model_running();
      if (!opt.screenshot.empty() && frame >= opt.frames && (ready || (frame >= max_frames && !viewer.model_running()))) {
        write_screenshot(opt.screenshot, fb_w, fb_h);
        const ImVec2 s = ImGui::GetIO().DisplayFramebufferScale;
        const ImVec4 r = viewer.heatmap_rect();
        // For tests: where the heatmap is in the PNG's pixels.
        std::cout << fmt::format("heatmap: {} {} {} {}\n", int(r.x * s.x), int(r.y * s.y), int(r.z * s.x), int(r.w * s.y))
                  << fmt::format("screenshot: {} ({}x{}, {} frames)\n", opt.screenshot, fb_w, fb_h, frame);
        break;
      }
      glfwSwapBuffers(window);
      if (opt.exit_after > 0 && glfwGetTime() - start >= opt.exit_after) break;
    }
    std::cout << fmt::format("rendered {} frames in {:.1f} s ({})\n", frames, glfwGetTime() - start, times.summary());
    if (!viewer.live_status().empty()) std::cout << "live: " << viewer.live_status() << "\n";
    std::cout << "title: " << viewer.window_title() << "\n" << viewer.table_summary();
    // The window showed it; stderr tells scripts and tests too.
    if (!viewer.error().empty()) std::cerr << "hooklens-view: error: " << viewer.error() << "\n";
  }
  ImGui_ImplOpenGL3_Shutdown();
  ImGui_ImplGlfw_Shutdown();
  ImGui::DestroyContext();
  glfwDestroyWindow(window);
  glfwTerminate();
  return 0;  // a damaged run is shown, not a failure of the viewer
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hooklens-view: look at a run directory's attention patterns, MLP activations and analyzer reports"};
  Options opt;
  // A later option overrides an earlier one, so a script's defaults (scripts/live.sh) can be changed.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)->always_capture_default();
  auto* run_dir = app.add_option("run", opt.run, "Run directory (made by hooklens capture or generate)");
  auto* model = app.add_option("--model", opt.live.model, "Live mode: run this model and show its patterns as it generates");
  run_dir->excludes(model);
  app.add_option("--prompt", opt.live.prompt, "Live mode: the prompt (text)")->needs(model);
  app.add_option("--prompt-ids", opt.live.prompt_ids, "Live mode: the prompt as token ids, e.g. 85,294,223")
      ->delimiter(',')->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->needs(model)->check(CLI::NonNegativeNumber);
  app.add_flag("--chat", opt.live.chat, "Live mode: the prompt is one user message in the model's chat template")->needs(model);
  app.add_option("--tokenizer", opt.live.tokenizer, "Live mode: a tokenizer (Hugging Face dir or llama2.c tokenizer.bin) instead of the model's own")
      ->needs(model);
  app.add_option("--max-new-tokens", opt.live.max_new_tokens, "Live mode, causal models: tokens to generate (greedy)")->needs(model);
  app.add_option("--gen-length", opt.live.gen_length, "Live mode, masked diffusion: positions to generate")->needs(model);
  app.add_option("--steps", opt.live.steps, "Live mode, masked diffusion: denoising steps")->needs(model);
  app.add_option("--block-length", opt.live.block_length, "Live mode, masked diffusion: block length (0 = gen length)")->needs(model);
  app.add_option("--analyze", opt.live.analyze, "Live mode: analyzer plugins run on the hooks (tables when generation ends; 'none' for none)")
      ->delimiter(',')->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->capture_default_str()->needs(model);
  app.add_flag("!--no-neurons", opt.live.neurons, "Live mode: do not keep MLP activations (blocks.*.mlp.hook_post)")->needs(model);
  app.add_option("--pace", opt.live.pace, "Live mode: seconds each step stays the newest at least (to watch a fast model)")
      ->needs(model)->check(CLI::Range(0.0, 60.0));
  app.add_option("--stop-after", opt.live.stop_after, "Live mode: press Stop once this many steps have finished (scripts, tests)")
      ->needs(model)->check(CLI::PositiveNumber);
  app.add_option("--live-memory", opt.live.memory_mib, "Live mode, masked diffusion: MiB of kept steps; older steps are dropped")
      ->capture_default_str()->needs(model)->check(CLI::Range(64, 1 << 20));
  const std::string changes = "Live mode: interventions, as hooklens generate takes them (docs/interventions.md)";
  for (auto [name, values, help] : {std::tuple{"--ablate", &opt.live.interventions.ablate, "Zero-ablate LAYER.HEAD or a SITE"},
                                    std::tuple{"--patch", &opt.live.interventions.patch, "Patch SITE from --patch-from RUN"},
                                    std::tuple{"--steer", &opt.live.interventions.steer, "Steer: SITE=FILE.safetensors[:TENSOR][*SCALE]"},
                                    std::tuple{"--mean-ablate", &opt.live.interventions.mean_ablate, "Mean-ablate SITE over --ablate-from"},
                                    std::tuple{"--resample-ablate", &opt.live.interventions.resample_ablate,
                                               "Resample-ablate SITE from --ablate-from"}})
    app.add_option(name, *values, help)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->needs(model)->group(changes);
  app.add_option("--patch-from", opt.live.interventions.patch_from, "The run --patch takes its values from")->needs(model)->group(changes);
  app.add_option("--ablate-from", opt.live.interventions.ablate_from, "The run or text file of --mean-ablate / --resample-ablate")
      ->needs(model)->group(changes);
  app.add_option("--screenshot", opt.screenshot, "Render, write this PNG and exit (for tests and CI)");
  app.add_option("--frames", opt.frames, "Frames to render before the screenshot")->check(CLI::Range(1, 100000));
  app.add_option("--select", opt.select, "The head shown at start: LAYER.HEAD (e.g. 2.1) or LAYER.mean");
  app.add_option("--tab", opt.tab, "The Details tab shown at start")->check(CLI::IsMember({"query", "prompt", "neurons", "analyzers"}));
  app.add_option("--step", opt.step, "The generation / diffusion step shown at start")->check(CLI::NonNegativeNumber);
  app.add_option("--exit-after", opt.exit_after, "Close after this many seconds")->check(CLI::NonNegativeNumber);
  app.add_option("--width", opt.width, "Window width")->check(CLI::Range(320, 8192));
  app.add_option("--height", opt.height, "Window height")->check(CLI::Range(240, 8192));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help is 0; every malformed option is a usage error
  }
  try {
    if (opt.run.empty() && opt.live.model.empty()) throw hooklens::UsageError("give a run directory, or --model DIR --prompt TEXT (see --help)");
    if (!opt.live.model.empty() && opt.live.prompt.empty() == opt.live.prompt_ids.empty())
      throw hooklens::UsageError("--model needs one of --prompt TEXT or --prompt-ids 1,2,3");
    if (opt.live.analyze == std::vector<std::string>{"none"}) opt.live.analyze.clear();
    // Keeps freed capture buffers in the process: reading layer after layer then faults no pages in.
    hooklens::init_runtime(0);
    return run(opt);
  } catch (const hooklens::UsageError& e) {
    std::cerr << "hooklens-view: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "hooklens-view: error: " << e.what() << "\n";
    return 1;
  }
}
