// The shared front of the example programs: parse the command line, run, and turn every failure
// into one line "NAME: error: ..." on stderr and an exit status, as the hooklens CLI does
// (0 success, 1 error, 2 usage error; --help exits 0).
#pragma once
#include <hooklens/error.h>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <functional>
#include <iostream>
#include <string>

inline int run_example(CLI::App& app, int argc, char** argv, const std::function<void()>& run) {
  const auto fail = [&](const std::string& message, int code) {
    std::cerr << app.get_name() << ": error: " << message.substr(0, message.find('\n')) << "\n";
    return code;
  };
  try {
    app.parse(argc, argv);
    run();
    return 0;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    return fail(e.what(), 2);
  } catch (const hooklens::UsageError& e) {
    return fail(e.what(), 2);
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace(), 1);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  }
}
