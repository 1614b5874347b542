// The Catch2 main of every test program, plus skipping (test_skip.h): without the reference
// fixtures the cases tagged [fixtures] are left out, and a case skips itself when a tool it compares
// against is missing. A program that skipped something and failed nothing exits with kSkipExitCode,
// which ctest reports as "Skipped", after printing why (and writing it to $HOOKLENS_SKIP_NOTES/<program>,
// which the summary at the end of a ctest run prints).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "test_skip.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <vector>

namespace fs = std::filesystem;

namespace {

std::vector<std::string>& skip_reasons() {
  static std::vector<std::string> reasons;
  return reasons;
}

bool reads_fixtures(const Catch::TestCase& c) {
  return std::find(c.lcaseTags.begin(), c.lcaseTags.end(), "fixtures") != c.lcaseTags.end();
}

// Prints the reasons and leaves them where the ctest summary finds them.
void report_skips(const char* argv0) {
  const std::string program = fs::path(argv0).filename().string();
  for (const std::string& reason : skip_reasons()) std::cout << "SKIPPED: " << reason << "\n";
  const char* notes = std::getenv("HOOKLENS_SKIP_NOTES");
  if (!notes || !*notes) return;
  std::error_code ec;
  fs::create_directories(notes, ec);
  std::ofstream out(fs::path(notes) / program);
  for (const std::string& reason : skip_reasons()) out << program << ": " << reason << "\n";
}

}  // namespace

namespace test {

fs::path fixtures() {
  const char* env = std::getenv("HOOKLENS_FIXTURES");
  return env && *env ? fs::path(env) : fs::path(HOOKLENS_FIXTURES_DIR);
}

void skip(const std::string& reason) {
  WARN("SKIPPED: " << reason);
  if (std::find(skip_reasons().begin(), skip_reasons().end(), reason) == skip_reasons().end())
    skip_reasons().push_back(reason);
}

}  // namespace test

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int status = session.applyCommandLine(argc, argv)) return status;
  Catch::ConfigData& data = session.configData();
  if (data.showHelp || data.listTests || data.listTestNamesOnly || data.listTags || data.listReporters)
    return session.run();

  const fs::path fixtures = test::fixtures();
  std::error_code ec;
  if (!fs::is_directory(fixtures, ec)) {
    std::size_t all = 0, need = 0;
    for (const Catch::TestCase& c : Catch::getAllTestCasesSorted(session.config())) {
      ++all;
      need += reads_fixtures(c);
    }
    if (need > 0) {
      skip_reasons().push_back(std::to_string(need) + " of " + std::to_string(all) +
                               " test cases not run: they read the reference fixtures, and there is no folder " +
                               fixtures.string() + " (HOOKLENS_FIXTURES=<folder> points the tests at them)");
      if (need == all) {
        report_skips(argv[0]);
        return test::kSkipExitCode;
      }
      data.testsOrTags.push_back("~[fixtures]");  // and-ed with any test spec given
      session.useConfigData(data);
    }
  }

  int status = session.run();
  if (status == test::kSkipExitCode) status = 1;  // 77 failed assertions must not read as "skipped"
  if (status == 0 && !skip_reasons().empty()) {
    report_skips(argv[0]);
    status = test::kSkipExitCode;
  }
  return status;
}
