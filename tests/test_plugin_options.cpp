// PluginOptions (hooklens/plugin_options.h), which every analyzer and renderer reads its options
// through: each accepted spelling, ranges, bad values and unknown keys; and the comma-list and
// suffix helpers of hooklens/text.h.
#include "refusal_util.h"

#include <hooklens/error.h>
#include <hooklens/plugin_options.h>
#include <hooklens/text.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace {

using hooklens::PluginOptions;
using nlohmann::json;

const std::vector<std::string> kKnown = {"n", "x", "flag", "name", "mode", "list"};

PluginOptions options(const json& given) { return PluginOptions("demo", given, kKnown); }

}  // namespace

TEST_CASE("plugin options: absent, null and the object itself") {
  const PluginOptions none("demo", nullptr, kKnown);
  CHECK_FALSE(none.has("n"));
  CHECK_FALSE(none.optional_integer("n").has_value());
  CHECK(none.integer("n", 7, 1) == 7);
  CHECK(none.boolean("flag", true));
  CHECK(none.choice("mode", {"a", "b"}, "b") == "b");
  CHECK_FALSE(none.int_list("list").has_value());
  CHECK(none.value("n").is_null());
  CHECK_FALSE(options({{"n", nullptr}}).has("n"));  // null: not given
  CHECK(options({{"n", nullptr}}).integer("n", 3, 0) == 3);
  CHECK(options(json::object()).plugin() == "demo");

  CHECK_THAT(test::usage_error_of([] { options(json::array({1})); }), Catch::Contains("demo: options must be a JSON object"));
  CHECK_THAT(test::usage_error_of([] { options("n=1"); }), Catch::Contains("demo: options must be a JSON object"));
}

TEST_CASE("plugin options: an unknown key names the plugin, the key and the known keys on one line") {
  const std::string message = test::usage_error_of([] { options({{"n", 1}, {"colour", "red"}}); });
  CHECK(message == "demo: unknown option 'colour' (known: n, x, flag, name, mode, list)");
  CHECK(test::usage_error_of([] { PluginOptions("bare", {{"k", "1"}}, {}); }) == "bare: unknown option 'k' (it has none)");
  // A hostile key is quoted briefly, still on one line.
  const std::string hostile = test::usage_error_of([] { options({{std::string(500, 'k') + "\nx", 1}}); });
  CHECK(hostile.find('\n') == std::string::npos);
  CHECK(hostile.size() < 200);
  CHECK_NOTHROW(PluginOptions("demo", json::object(), {}));
}

TEST_CASE("plugin options: integers as numbers or strings, within a range") {
  CHECK(options({{"n", 5}}).optional_integer("n") == 5);
  CHECK(options({{"n", "5"}}).optional_integer("n") == 5);
  CHECK(options({{"n", " 5 "}}).optional_integer("n") == 5);
  CHECK(options({{"n", "-3"}}).optional_integer("n") == -3);
  CHECK(options({{"n", 0}}).integer("n", 10, 0) == 0);
  CHECK(options({{"n", "12"}}).optional_integer("n", 0, 12) == 12);

  // The message shows NAME.KEY=VALUE as given, then what is wrong.
  CHECK(test::usage_error_of([] { options({{"n", "0"}}).integer("n", 10, 1); }) == "demo.n=\"0\": option 'n' must be an integer >= 1");
  CHECK(test::usage_error_of([] { options({{"n", 13}}).optional_integer("n", 0, 12); }) == "demo.n=13: option 'n' must be an integer in 0..12");
  CHECK_THAT(test::usage_error_of([] { options({{"n", 5}}).optional_integer("n", std::numeric_limits<std::int64_t>::min(), 4); }),
             Catch::Contains("<= 4"));
  for (const json& bad : {json("3x"), json(""), json("1.5"), json(1.5), json(true), json::array({1}), json("99999999999999999999"),
                          json(18446744073709551615ull)}) {
    INFO(bad.dump());
    CHECK_THAT(test::usage_error_of([&] { options({{"n", bad}}).optional_integer("n"); }),
               Catch::StartsWith("demo.n=") && Catch::EndsWith(": option 'n' must be an integer"));
  }
}

TEST_CASE("plugin options: numbers, positive numbers") {
  CHECK(options({{"x", 0.25}}).number("x") == 0.25);
  CHECK(options({{"x", "0.25"}}).number("x") == 0.25);
  CHECK(options({{"x", 3}}).number("x") == 3.0);
  CHECK(options({{"x", "1e-3"}}).positive_number("x") == 0.001);
  CHECK(options({{"x", 2}}).number("x", 0, 2) == 2.0);
  CHECK_THAT(test::usage_error_of([] { options({{"x", 2.5}}).number("x", 0, 2); }), Catch::Contains("'x' must be a number in 0..2"));
  for (const json& bad : {json("nan"), json("inf"), json("1.5x"), json(""), json(false), json::array()}) {
    INFO(bad.dump());
    CHECK_THAT(test::usage_error_of([&] { options({{"x", bad}}).number("x"); }), Catch::Contains("'x' must be a number"));
  }
  for (const json& bad : {json(0), json(-1), json("-0.5"), json("0")}) {
    INFO(bad.dump());
    CHECK_THAT(test::usage_error_of([&] { options({{"x", bad}}).positive_number("x"); }), Catch::Contains("'x' must be a positive number"));
  }
}

TEST_CASE("plugin options: booleans, strings and choices") {
  for (const json& yes : {json(true), json("true"), json(1), json("1")}) CHECK(options({{"flag", yes}}).boolean("flag", false));
  for (const json& no : {json(false), json("false"), json(0), json("0")}) CHECK_FALSE(options({{"flag", no}}).boolean("flag", true));
  for (const json& bad : {json("yes"), json(2), json("TRUE"), json(0.0), json::array()}) {
    INFO(bad.dump());
    CHECK_THAT(test::usage_error_of([&] { options({{"flag", bad}}).boolean("flag", false); }), Catch::Contains("'flag' must be true or false"));
  }
  CHECK(options({{"name", "abc"}}).string("name") == "abc");
  CHECK_THAT(test::usage_error_of([] { options({{"name", 3}}).string("name"); }), Catch::Equals("demo.name=3: option 'name' must be a string"));
  CHECK(options({{"mode", "b"}}).choice("mode", {"a", "b"}, "a") == "b");
  CHECK(options({{"mode", "b"}}).value("mode") == "b");
  CHECK_THAT(test::usage_error_of([] { options({{"mode", "c"}}).choice("mode", {"a", "b"}, "a"); }),
             Catch::Equals("demo.mode=\"c\": option 'mode' must be one of a, b"));
}

TEST_CASE("plugin options: integer lists as 2, [0, 2] or \"0,2\"") {
  using V = std::vector<int>;
  CHECK(options({{"list", 2}}).int_list("list") == V{2});
  CHECK(options({{"list", {0, 2}}}).int_list("list") == V{0, 2});
  CHECK(options({{"list", "0,2"}}).int_list("list") == V{0, 2});
  CHECK(options({{"list", "0, 2"}}).int_list("list") == V{0, 2});
  CHECK(options({{"list", "7"}}).int_list("list") == V{7});
  CHECK(options({{"list", json::array()}}).int_list("list") == V{});  // given, and empty
  CHECK(options({{"list", "-1,3"}}).int_list("list") == V{-1, 3});
  CHECK(options({{"list", {3, 3}}}).int_list("list", 0, 3) == V{3, 3});

  for (const json& bad : {json("x"), json("1,,2"), json("1,"), json(""), json("0;2"), json(1.5), json::array({1, "2"}),
                          json::array({json::array({1})}), json(true), json::object()}) {
    INFO(bad.dump());
    CHECK_THAT(test::usage_error_of([&] { options({{"list", bad}}).int_list("list"); }),
               Catch::StartsWith("demo.list=") &&
                   Catch::EndsWith(": option 'list' must be a list of integers such as 2, [0, 2] or \"0,2\""));
  }
  CHECK(test::usage_error_of([] { options({{"list", "0,-1"}}).int_list("list", 0); }) ==
        "demo.list=\"0,-1\": option 'list' must be a list of integers >= 0 such as 2, [0, 2] or \"0,2\" (-1 is not)");
  CHECK_THAT(test::usage_error_of([] { options({{"list", {1, 9}}}).int_list("list", 0, 4); }),
             Catch::StartsWith("demo.list=[1,9]: ") && Catch::Contains("in 0..4") && Catch::EndsWith("(9 is not)"));
  CHECK_THAT(test::usage_error_of([] { options({{"list", "3000000000"}}).int_list("list"); }), Catch::EndsWith("(3000000000 is not)"));
}

TEST_CASE("split_list keeps every item as written; ends_with") {
  using V = std::vector<std::string>;
  CHECK(hooklens::split_list("0,2") == V{"0", "2"});
  CHECK(hooklens::split_list("abc") == V{"abc"});
  CHECK(hooklens::split_list("") == V{""});
  CHECK(hooklens::split_list("1,") == V{"1", ""});
  CHECK(hooklens::split_list(",1") == V{"", "1"});
  CHECK(hooklens::split_list("a b,,c") == V{"a b", "", "c"});
  CHECK(hooklens::split_list("a.b.c", '.') == V{"a", "b", "c"});

  CHECK(hooklens::ends_with("blocks.0.mlp.hook_post", "mlp.hook_post"));
  CHECK(hooklens::ends_with("x", ""));
  CHECK(hooklens::ends_with("abc", "abc"));
  CHECK_FALSE(hooklens::ends_with("bc", "abc"));
  CHECK_FALSE(hooklens::ends_with("model.bin.tmp", ".bin"));
}
