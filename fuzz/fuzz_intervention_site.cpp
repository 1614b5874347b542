// Fuzz target: the text of an intervention (--patch SITE, --steer SITE=FILE*SCALE, --mean-ablate
// SITE@FILE), as hooklens/intervention.h parses it. The input is the option's value. A parse either
// refuses with a one-line UsageError or gives a site whose normalised text parses to itself, and
// whose ranges resolve inside every dimension.
#include "fuzz_util.h"
#include "hooklens/error.h"
#include "hooklens/intervention.h"

#include <cstdint>
#include <string>

namespace {

void check_ranges(const hooklens::InterventionSite& site) {
  std::vector<hooklens::IndexRange> ranges;
  for (const auto& s : site.select) ranges.push_back(s.second);
  if (site.steps) ranges.push_back(*site.steps);
  if (site.blocks) ranges.push_back(*site.blocks);
  for (const auto& r : ranges)
    for (std::int64_t total : {0, 1, 7, 64}) {
      const auto [first, last] = r.absolute(total);
      if (first < 0 || last > total || first > last) fuzz::violated("a range resolved outside its dimension");
      for (std::int64_t offset : {std::int64_t(0), total / 2}) {
        const auto [a, b] = r.resolve(offset, total - offset, total);
        if (a < 0 || b > total - offset || a > b) fuzz::violated("a range resolved outside the event's part");
      }
    }
}

void check_site(const hooklens::InterventionSite& site, const char* option) {
  check_ranges(site);
  const std::string text = site.text();
  hooklens::InterventionSite again;
  try {
    again = hooklens::InterventionSite::parse(text, option);
  } catch (const hooklens::Error& e) {
    fuzz::violated("a normalised site is refused: " + text + ": " + e.what());
  }
  if (again.text() != text) fuzz::violated("a normalised site reads back differently: " + text + " vs " + again.text());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::attempt([&] { check_site(hooklens::InterventionSpec::patch(text).site, "--patch"); });
  fuzz::attempt([&] {
    const auto s = hooklens::InterventionSpec::steer(text);
    check_site(s.site, "--steer");
    if (s.vector.empty()) fuzz::violated("a steering spec without its vector");
    (void)hooklens::split_tensor_file(s.vector);
  });
  fuzz::attempt([&] {
    const auto s = hooklens::InterventionSpec::ablation(hooklens::InterventionKind::mean_ablate, text);
    check_site(s.site, "--mean-ablate");
  });
  fuzz::attempt([&] { (void)hooklens::IndexRange::parse(text, "range"); });
  return 0;
}
