// An analyzer for the tests of analyzer isolation: counts the captures it sees and fails where its
// option fail_in says (begin, observe, finish; anything else: never).
#include <hooklens/analyzer.h>
#include <hooklens/error.h>
#include <hooklens/plugin_define.h>

namespace {

class FailingAnalyzer final : public hooklens::Analyzer {
 public:
  std::vector<std::string> hooks() const override { return {"blocks.*.attn.hook_pattern"}; }
  void begin(const nlohmann::json& run) override {
    fail_in_ = run["options"].value("fail_in", "never");
    if (fail_in_ == "begin") throw hooklens::Error("failing in begin, as asked");
  }
  void observe(std::string_view, const hooklens::CaptureContext&, const at::Tensor&) override {
    if (++captures_ == 2 && fail_in_ == "observe") throw hooklens::Error("failing in observe, as asked");
  }
  nlohmann::json finish(const nlohmann::json&) override {
    if (fail_in_ == "finish") throw hooklens::Error("failing in finish, as asked");
    return {{"analyzer", "failing"}, {"captures", captures_}};
  }

 private:
  std::string fail_in_;
  int captures_ = 0;
};

}  // namespace

HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, FailingAnalyzer, "analyzer", "failing", "1.0", "fails when asked (tests)")
