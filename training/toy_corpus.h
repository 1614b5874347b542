// The training text of hooklens' toy models, written by code (nothing is downloaded): short stories
// from a small grammar, and sequences whose random segment repeats. Both are deterministic: a seed
// gives the same bytes with every compiler and standard library (hooklens' own PRNG below, no
// std::*_distribution, whose results differ between libraries).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hooklens::training {

// SplitMix64 (Steele, Lea and Flood): tiny, and the same numbers everywhere.
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next();
  // In [0, n), n > 0 (by modulo: the bias, n / 2^64, is negligible here).
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }

 private:
  std::uint64_t state_;
};

// `count` stories in plain ASCII English (a few hundred words of vocabulary). Each names a hero and a
// friend, an object and places, has dialogue in double quotes, and repeats its names and phrases so
// that copying earlier tokens pays. A story is one document: paragraphs of sentences, ending with
// "The end." and a newline, with no end marker (see join_documents).
std::vector<std::string> toy_stories(std::uint64_t seed, std::size_t count);

struct SegmentOptions {
  std::size_t min_length = 4, max_length = 16;  // units in the random segment
  std::size_t repeats = 2;                      // how often the segment occurs in a document (>= 2)
};
// `count` documents, each one random segment written `repeats` times: units separated by single
// spaces, the copies too, ending with a newline. A document's units are either words of the story
// vocabulary or random lowercase strings of 1 to 4 letters (chosen per document), so that predicting
// the second copy needs an induction head, not memorised phrases. Throws UsageError for options
// outside 1 <= min_length <= max_length, repeats >= 2.
std::vector<std::string> repeated_segments(std::uint64_t seed, std::size_t count, const SegmentOptions& options = {});

// The end-of-text marker between documents (GPT-2's, which the BPE trainer adds as a special token).
inline constexpr const char* kEndOfText = "<|endoftext|>";
// The documents as one text, each followed by kEndOfText (GPT-2's training layout).
std::string join_documents(const std::vector<std::string>& documents);

}  // namespace hooklens::training
