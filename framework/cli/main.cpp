// hooklens: capture what happens inside transformer language models while they run.
#include "cli.h"

#include <hooklens/error.h>

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iostream>

namespace {

// Errors are one line: libtorch messages carry backtraces and notes after the first line.
int fail(const std::string& message, int code) {
  std::cerr << "hooklens: error: " << message.substr(0, message.find('\n')) << "\n";
  if (code == 2) std::cerr << "Run 'hooklens --help' or 'hooklens COMMAND --help' for usage.\n";
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hooklens: hook into transformer language models while they run and capture what happens "
               "inside them (attention patterns, q/k/v, residual stream, MLP neurons, logits) at every step."};
  app.name("hooklens");
  app.require_subcommand(1);
  app.footer("Run 'hooklens COMMAND --help' for a command's options. Exit status: 0 success, 1 error, 2 usage error.");
  hooklens::cli::add_info_commands(app);
  hooklens::cli::add_run_commands(app);
  hooklens::cli::add_analyze_commands(app);
  hooklens::cli::add_bench_command(app);
  hooklens::cli::add_demo_model_command(app);
  hooklens::cli::add_bench_model_command(app);
  hooklens::cli::add_train_command(app);
  hooklens::cli::add_patch_sweep_command(app);
  hooklens::cli::add_steering_vector_command(app);
  try {
    app.parse(argc, argv);
    return 0;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // CLI11 checks required options before unknown ones; a misspelt option is the real culprit.
    const auto extras = app.remaining(true);
    if (dynamic_cast<const CLI::RequiredError*>(&e) && !extras.empty())
      return fail(fmt::format("unknown argument{} {}", extras.size() > 1 ? "s" : "", fmt::join(extras, " ")), 2);
    return fail(e.what(), 2);
  } catch (const hooklens::UsageError& e) {
    return fail(e.what(), 2);
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace(), 1);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  }
}
