// Capture slicing: heads, query/pos and key ranges on the four hook-point layouts, against values
// picked element by element; decode-step contexts; clipping; range parsing; and one capture of a
// real model's attention pattern (GPT-Neo fixture) against the full pattern and the HF reference.
#include "model_util.h"

#include <ATen/ATen.h>

#include <hooklens/capture_slice.h>
#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/weights.h>

#include <nlohmann/json.hpp>

#include <numeric>

using namespace hooklens;

namespace {

const HookPointInfo kPattern{"blocks.0.attn.hook_pattern", {"batch", "head", "query", "key"}, 0};
const HookPointInfo kHeads{"blocks.0.attn.hook_z", {"batch", "pos", "head", "d_head"}, 0};
const HookPointInfo kResid{"blocks.0.hook_resid_post", {"batch", "pos", "d_model"}, 0};
const HookPointInfo kMlp{"blocks.0.mlp.hook_post", {"batch", "pos", "d_mlp"}, 0};

using Indices = std::vector<std::int64_t>;

Indices span(std::int64_t begin, std::int64_t end) {
  Indices v(std::size_t(end - begin));
  std::iota(v.begin(), v.end(), begin);
  return v;
}
Indices all_of(const at::Tensor& t, int dim) { return span(0, t.size(dim)); }

// The tensor whose element [i0, i1, ...] is full[idx[0][i0], idx[1][i1], ...], read element by
// element from `full`'s contiguous data (independent of narrow/index_select).
at::Tensor pick(const at::Tensor& full, const std::vector<Indices>& idx) {
  REQUIRE(std::int64_t(idx.size()) == full.dim());
  const at::Tensor src = full.contiguous();
  std::vector<std::int64_t> shape;
  for (const auto& i : idx) shape.push_back(std::int64_t(i.size()));
  at::Tensor out = at::empty(shape, at::kFloat);
  const float* in = src.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const auto strides = src.strides();
  for (std::int64_t flat = 0; flat < out.numel(); ++flat) {
    std::int64_t rest = flat, offset = 0;
    for (int d = int(shape.size()) - 1; d >= 0; --d) {
      offset += idx[d][std::size_t(rest % shape[d])] * strides[d];
      rest /= shape[d];
    }
    o[flat] = in[offset];
  }
  return out;
}

at::Tensor numbered(std::vector<std::int64_t> shape) {
  std::int64_t n = 1;
  for (auto s : shape) n *= s;
  return at::arange(n, at::kFloat).view(shape);
}

CaptureContext at_offset(std::int64_t query_offset) {
  CaptureContext ctx;
  ctx.query_offset = query_offset;
  ctx.layer = 0;
  ctx.step = 3;
  return ctx;
}

PositionRange range(std::int64_t begin, std::int64_t end) { return {begin, end}; }

bool owns_compact_storage(const at::Tensor& t) { return t.is_contiguous() && t.storage().nbytes() == t.nbytes(); }

}  // namespace

TEST_CASE("slice_capture: attention pattern [batch, head, query, key]") {
  const at::Tensor full = numbered({2, 4, 6, 7});
  const at::Tensor before = full.clone();

  SECTION("non-contiguous head list, query and key ranges") {
    CaptureSlice s{{3, 1}, range(1, 4), range(2, 5)};
    auto r = slice_capture(kPattern, full, at_offset(0), s);
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(full, {all_of(full, 0), {3, 1}, span(1, 4), span(2, 5)})));
    CHECK(r->second.query_offset == 1);
    CHECK(r->second.key_offset == 2);
    CHECK(r->second.step == 3);
    CHECK(r->second.layer == 0);
    CHECK(owns_compact_storage(r->first));
  }
  SECTION("consecutive heads, open-ended ranges") {
    CaptureSlice s{{1, 2}, range(4, -1), range(0, 3)};
    auto r = slice_capture(kPattern, full, at_offset(0), s);
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(full, {all_of(full, 0), {1, 2}, span(4, 6), span(0, 3)})));
    CHECK(r->second.query_offset == 4);
    CHECK(r->second.key_offset == 0);
    CHECK(owns_compact_storage(r->first));
  }
  SECTION("all heads permuted") {
    CaptureSlice s{{1, 0, 3, 2}, std::nullopt, std::nullopt};
    auto r = slice_capture(kPattern, full, at_offset(0), s);
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(full, {all_of(full, 0), {1, 0, 3, 2}, all_of(full, 2), all_of(full, 3)})));
  }
  SECTION("ranges partly outside the tensor are clipped") {
    // Rows are positions 10..15, keys 0..6.
    CaptureSlice s{{}, range(5, 13), range(5, 100)};
    auto r = slice_capture(kPattern, full, at_offset(10), s);
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(full, {all_of(full, 0), all_of(full, 1), span(0, 3), span(5, 7)})));
    CHECK(r->second.query_offset == 10);
    CHECK(r->second.key_offset == 5);
  }
  SECTION("a key offset already set is honoured") {
    CaptureContext ctx = at_offset(0);
    ctx.key_offset = 20;  // key columns are positions 20..26
    auto r = slice_capture(kPattern, full, ctx, CaptureSlice{{}, std::nullopt, range(22, 24)});
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(full, {all_of(full, 0), all_of(full, 1), all_of(full, 2), span(2, 4)})));
    CHECK(r->second.key_offset == 22);
    CHECK_FALSE(slice_capture(kPattern, full, ctx, CaptureSlice{{}, std::nullopt, range(0, 20)}));
  }
  SECTION("nothing cut away: the fired tensor itself, unchanged context") {
    for (const CaptureSlice& s : {CaptureSlice{}, CaptureSlice{{0, 1, 2, 3}, range(0, -1), range(0, 7)},
                                  CaptureSlice{{}, range(0, 100), std::nullopt}}) {
      auto r = slice_capture(kPattern, full, at_offset(0), s);
      REQUIRE(r);
      CHECK(r->first.is_same(full));
      CHECK(r->second.query_offset == 0);
      CHECK(r->second.key_offset == 0);
    }
  }
  SECTION("no query row or key column in range: nothing captured") {
    CHECK_FALSE(slice_capture(kPattern, full, at_offset(0), CaptureSlice{{}, range(6, -1), std::nullopt}));
    CHECK_FALSE(slice_capture(kPattern, full, at_offset(10), CaptureSlice{{}, range(0, 10), std::nullopt}));
    CHECK_FALSE(slice_capture(kPattern, full, at_offset(0), CaptureSlice{{}, std::nullopt, range(7, 9)}));
  }
  SECTION("bad heads") {
    CHECK_THROWS_AS(slice_capture(kPattern, full, at_offset(0), CaptureSlice{{4}, {}, {}}), UsageError);
    const std::string msg = test::error_of([&] { slice_capture(kPattern, full, at_offset(0), CaptureSlice{{0, 4}, {}, {}}); });
    CHECK_THAT(msg, Catch::Contains("head 4") && Catch::Contains("4 heads") && Catch::Contains(kPattern.name));
    CHECK_THROWS_AS(slice_capture(kPattern, full, at_offset(0), CaptureSlice{{-1}, {}, {}}), UsageError);
    CHECK_THAT(test::error_of([&] { slice_capture(kPattern, full, at_offset(0), CaptureSlice{{1, 1}, {}, {}}); }),
               Catch::Contains("head 1 is listed twice"));
    // Even when this event would be skipped, a head the tensor cannot have is reported.
    CHECK_THROWS_AS(slice_capture(kPattern, full, at_offset(0), CaptureSlice{{9}, range(50, 60), {}}), UsageError);
  }
  SECTION("malformed ranges and layouts") {
    CHECK_THROWS_AS(slice_capture(kPattern, full, at_offset(0), CaptureSlice{{}, range(3, 3), {}}), UsageError);
    CHECK_THROWS_AS(slice_capture(kPattern, full, at_offset(0), CaptureSlice{{}, {}, range(-2, 3)}), UsageError);
    CHECK_THROWS_AS(slice_capture(kResid, full, at_offset(0), CaptureSlice{{}, range(0, 1), {}}), Error);
  }
  CHECK(at::equal(full, before));  // slicing never writes into the fired tensor
}

TEST_CASE("slice_capture: decode step, one query row at position 10") {
  const at::Tensor full = numbered({1, 4, 1, 11});  // keys 0..10
  const CaptureContext ctx = at_offset(10);

  SECTION("row in range: kept with its offsets") {
    auto r = slice_capture(kPattern, full, ctx, CaptureSlice{{2}, range(8, 12), range(0, 3)});
    REQUIRE(r);
    CHECK(r->first.sizes() == at::IntArrayRef{1, 1, 1, 3});
    CHECK(at::equal(r->first, pick(full, {{0}, {2}, {0}, span(0, 3)})));
    CHECK(r->second.query_offset == 10);
    CHECK(r->second.key_offset == 0);
  }
  SECTION("row exactly at the range's first position") {
    auto r = slice_capture(kPattern, full, ctx, CaptureSlice{{}, range(10, -1), range(9, -1)});
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(full, {{0}, all_of(full, 1), {0}, span(9, 11)})));
    CHECK(r->second.query_offset == 10);
    CHECK(r->second.key_offset == 9);
  }
  SECTION("row out of range: nothing captured") {
    CHECK_FALSE(slice_capture(kPattern, full, ctx, CaptureSlice{{}, range(2, 5), std::nullopt}));
    CHECK_FALSE(slice_capture(kPattern, full, ctx, CaptureSlice{{}, range(2, 10), std::nullopt}));
    CHECK_FALSE(slice_capture(kPattern, full, ctx, CaptureSlice{{}, range(11, -1), std::nullopt}));
    const at::Tensor z = numbered({1, 1, 4, 3});
    CHECK_FALSE(slice_capture(kHeads, z, ctx, CaptureSlice{{1}, range(0, 10), std::nullopt}));
  }
}

TEST_CASE("slice_capture: per-position layouts") {
  SECTION("[batch, pos, head, d_head]: heads and positions; no key dim") {
    const at::Tensor z = numbered({2, 6, 4, 3});
    CaptureSlice s{{3, 0}, range(2, -1), range(0, 1)};
    auto r = slice_capture(kHeads, z, at_offset(0), s);
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(z, {all_of(z, 0), span(2, 6), {3, 0}, all_of(z, 3)})));
    CHECK(r->second.query_offset == 2);
    CHECK(r->second.key_offset == 0);  // no key dim: the key range does not apply

    auto r2 = slice_capture(kHeads, z, at_offset(0), CaptureSlice{{1, 2}, {}, {}});
    REQUIRE(r2);
    CHECK(at::equal(r2->first, pick(z, {all_of(z, 0), all_of(z, 1), {1, 2}, all_of(z, 3)})));
    CHECK(owns_compact_storage(r2->first));
  }
  SECTION("[batch, pos, d_model]: heads do not apply") {
    const at::Tensor x = numbered({2, 6, 5});
    auto r = slice_capture(kResid, x, at_offset(4), CaptureSlice{{7}, range(0, 7), range(0, 1)});
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(x, {all_of(x, 0), span(0, 3), all_of(x, 2)})));
    CHECK(r->second.query_offset == 4);
    auto untouched = slice_capture(kResid, x, at_offset(4), CaptureSlice{{7}, {}, {}});
    REQUIRE(untouched);
    CHECK(untouched->first.is_same(x));
  }
  SECTION("[batch, pos, d_mlp]: range clipped at the end") {
    const at::Tensor m = numbered({1, 6, 8});
    auto r = slice_capture(kMlp, m, at_offset(0), CaptureSlice{{}, range(4, 100), {}});
    REQUIRE(r);
    CHECK(at::equal(r->first, pick(m, {{0}, span(4, 6), all_of(m, 2)})));
    CHECK(r->second.query_offset == 4);
    // A contiguous narrow still shares the fired tensor's storage: the slice gets its own.
    CHECK(owns_compact_storage(r->first));
  }
}

TEST_CASE("CaptureSlice::parse_range") {
  auto same = [](PositionRange a, PositionRange b) { return a.begin == b.begin && a.end == b.end; };
  CHECK(same(CaptureSlice::parse_range("2:5"), range(2, 5)));
  CHECK(same(CaptureSlice::parse_range("0:1"), range(0, 1)));
  CHECK(same(CaptureSlice::parse_range("3:"), range(3, -1)));
  CHECK(same(CaptureSlice::parse_range(":7"), range(0, 7)));
  CHECK(same(CaptureSlice::parse_range("128:512"), range(128, 512)));
  for (const char* bad : {"5:2", "2:2", "a:b", ":", "3", "", "-1:3", "1:2:3", " 1:2", "1:x", ":0", "1.5:3",
                          "99999999999999999999:"}) {
    INFO("'" << bad << "'");
    CHECK_THROWS_AS(CaptureSlice::parse_range(bad), UsageError);
  }
  CHECK_THAT(test::error_of([] { CaptureSlice::parse_range("5:2"); }), Catch::Contains("'5:2'"));
  CHECK(CaptureSlice{}.empty());
  CHECK_FALSE(CaptureSlice{{}, range(0, 1), {}}.empty());
  CHECK_FALSE(CaptureSlice{{0}, {}, {}}.empty());
}

TEST_CASE("slice_capture on a real model's attention pattern (tiny-neo-a)", "[fixtures]") {
  const auto fixture = test::fixtures() / "tiny-neo-a";
  auto model = test::load_model("gpt_neo", fixture);
  const std::string name = "blocks.0.attn.hook_pattern";
  std::optional<HookPointInfo> point;
  for (const auto& p : model->hook_points())
    if (p.name == name) point = p;
  REQUIRE(point);

  const auto prompt = read_json_file(fixture / "prompts.json")["prompts"][1];
  const auto ids = prompt["input_ids"].get<std::vector<std::int64_t>>();
  const std::int64_t T = std::int64_t(ids.size());
  REQUIRE(T > 5);
  const at::Tensor reference = read_safetensors(fixture / "reference_1.safetensors").at("attn.L0");

  CaptureSlice slice{{1, 3}, CaptureSlice::parse_range("2:5"), CaptureSlice::parse_range("0:3")};
  std::vector<std::pair<at::Tensor, CaptureContext>> sliced, full;
  HookSet hooks;
  hooks.add({{name}}, [&](std::string_view, const CaptureContext& ctx, at::Tensor& t) {
    full.emplace_back(t, ctx);
    if (auto r = slice_capture(*point, t, ctx, slice)) sliced.push_back(std::move(*r));
  });

  // Prefill all but the last token, then decode the last one (query position T-1) with the cache.
  auto state = model->new_state();
  REQUIRE(state);
  at::Tensor input = at::tensor(at::ArrayRef<std::int64_t>(ids), at::kLong).unsqueeze(0);
  model->forward(input.narrow(1, 0, T - 1), hooks, {}, state.get());
  REQUIRE(sliced.size() == 1);
  const Indices heads{1, 3}, queries = span(2, 5), keys = span(0, 3);
  CHECK(at::equal(sliced[0].first, pick(full[0].first, {{0}, heads, queries, keys})));
  CHECK(test::max_abs_diff(sliced[0].first, pick(reference, {{0}, heads, queries, keys})) < 1e-5);
  CHECK(sliced[0].second.query_offset == 2);
  CHECK(sliced[0].second.key_offset == 0);
  CHECK(sliced[0].second.layer == 0);

  model->forward(input.narrow(1, T - 1, 1), hooks, {}, state.get());
  REQUIRE(full.size() == 2);
  REQUIRE(full[1].second.query_offset == T - 1);
  CHECK(sliced.size() == 1);  // the decode row (position T-1) is outside 2:5

  slice.queries = CaptureSlice::parse_range(fmt::format("{}:", T - 1));
  auto r = slice_capture(*point, full[1].first, full[1].second, slice);
  REQUIRE(r);
  CHECK(at::equal(r->first, pick(full[1].first, {{0}, heads, {0}, keys})));
  CHECK(test::max_abs_diff(r->first, pick(reference, {{0}, heads, {T - 1}, keys})) < 1e-5);
  CHECK(r->second.query_offset == T - 1);
  CHECK(r->second.key_offset == 0);
}
