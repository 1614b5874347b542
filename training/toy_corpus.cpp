#include "toy_corpus.h"

#include "hooklens/error.h"

#include <fmt/format.h>

#include <string_view>

namespace hooklens::training {

std::uint64_t SplitMix64::next() {
  std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

namespace {

using Words = std::vector<std::string_view>;

const Words kNames = {"Tom",  "Lily", "Ben",  "Mia",   "Sam",  "Anna", "Max", "Lucy", "Jack", "Emma",
                      "Leo",  "Sara", "Tim",  "Zoe",   "Dan",  "Amy",  "Bob", "Kate", "Finn", "Rosa",
                      "Noah", "Ella", "Otto", "Daisy", "Hugo", "Ivy",  "Ned", "Ruby", "Owen", "Nora"};
const Words kKinds = {"girl", "boy", "cat", "dog", "bird", "fox", "rabbit", "bear", "mouse", "frog", "duck", "owl"};
const Words kAdjectives = {"little", "happy", "brave", "kind",  "small", "funny", "shy",  "clever",
                           "quiet",  "big",   "silly", "gentle", "curious", "tired", "busy", "friendly"};
const Words kObjects = {"ball", "kite", "book", "hat",   "box",    "cake",  "drum", "shell", "key", "boat",
                        "bell", "cup",  "map",  "apple", "flower", "stone", "toy",  "lamp",  "sock", "coin",
                        "bag",  "star", "feather", "spoon", "ribbon", "basket"};
const Words kColors = {"red", "blue", "green", "yellow", "shiny", "old", "new", "pink", "golden", "tiny"};
const Words kPlaces = {"park",   "garden", "forest", "house", "school", "river", "beach", "farm",
                       "town",   "hill",   "kitchen", "yard", "lake",  "field", "barn",  "library"};
const Words kPlayVerbs = {"played", "ran",  "danced", "sang", "jumped", "laughed", "walked", "raced"};
const Words kFeelings = {"happy", "sad", "excited", "scared", "proud", "surprised", "glad", "sleepy"};
const Words kWeather = {"sunny", "rainy", "windy", "cold", "warm", "bright", "cloudy", "quiet"};
const Words kTimes = {"One day", "One morning", "After lunch", "In the evening", "Later that day", "The next day"};
const Words kActions = {"looked at", "picked up", "held", "cleaned", "hid", "showed", "carried", "painted"};

std::string_view pick(SplitMix64& rng, const Words& words) { return words[rng.below(words.size())]; }

bool starts_with_vowel(std::string_view w) {
  return !w.empty() && std::string_view("aeiouAEIOU").find(w[0]) != std::string_view::npos;
}
std::string a(std::string_view word) { return std::string(starts_with_vowel(word) ? "an " : "a ") + std::string(word); }

std::string story(SplitMix64& rng) {
  const std::string hero(pick(rng, kNames));
  std::string pal(pick(rng, kNames));
  while (pal == hero) pal = std::string(pick(rng, kNames));
  const std::string kind(pick(rng, kKinds)), pal_kind(pick(rng, kKinds));
  const std::string adjective(pick(rng, kAdjectives)), color(pick(rng, kColors));
  const std::string object(pick(rng, kObjects)), home(pick(rng, kPlaces));
  std::string away(pick(rng, kPlaces));
  while (away == home) away = std::string(pick(rng, kPlaces));
  const std::string the_object = "the " + color + " " + object;

  std::string s;
  s += "Once upon a time, there was " + a(adjective) + " " + kind + " named " + hero + ". ";
  s += hero + " lived near the " + home + ". ";
  s += hero + " liked to " + std::string(pick(rng, {"play", "run", "sing", "read", "draw", "dance"})) +
       " in the " + home + ".\n";
  s += std::string(pick(rng, kTimes)) + ", " + hero + " found " + a(color) + " " + object + " in the " + away + ". ";
  s += hero + " said, \"What " + a(color) + " " + object + "! I will keep the " + object + ".\"\n";

  // The middle: the friend is met first, then a few events in random order and number, all about
  // the same names and object.
  const std::size_t events = 2 + rng.below(4);
  for (std::size_t e = 0; e < events; ++e) {
    switch (e == 0 ? 0 : rng.below(7)) {
      case 0:
        s += "Then " + hero + " met " + pal + ", " + a(pal_kind) + ". " + pal + " said, \"Hello, " + hero +
             "! Can I play with " + the_object + "?\" ";
        s += hero + " said, \"Yes, " + pal + ". We can share " + the_object + ".\"\n";
        break;
      case 1:
        s += hero + " and " + pal + " " + std::string(pick(rng, kPlayVerbs)) + " in the " + away + ". ";
        s += "The day was " + std::string(pick(rng, kWeather)) + ", and they " + std::string(pick(rng, kPlayVerbs)) +
             " with " + the_object + ".\n";
        break;
      case 2:
        s += "But " + the_object + " was lost! " + hero + " was " + std::string(pick(rng, kFeelings)) + ". ";
        s += hero + " said, \"Where is " + the_object + "?\" " + pal + " looked in the " + away + " and found it. ";
        s += pal + " said, \"Here is " + the_object + ", " + hero + ".\"\n";
        break;
      case 3:
        s += hero + " " + std::string(pick(rng, kActions)) + " " + the_object + ". ";
        s += hero + " felt " + std::string(pick(rng, kFeelings)) + " and said, \"I love my " + object + ".\"\n";
        break;
      case 4:
        s += "A " + std::string(pick(rng, kAdjectives)) + " " + std::string(pick(rng, kKinds)) + " came to the " +
             away + ". It wanted " + the_object + ". " + hero + " said, \"No, this " + object + " is mine.\" ";
        s += pal + " said, \"Let us go home, " + hero + ".\"\n";
        break;
      case 5:
        s += hero + " asked " + pal + ", \"Do you like " + the_object + "?\" " + pal + " said, \"Yes, " + hero +
             ", I like the " + object + " very much.\"\n";
        break;
      default:
        s += hero + " and " + pal + " went to the " + home + " with " + the_object + ". They " +
             std::string(pick(rng, kPlayVerbs)) + " and " + std::string(pick(rng, kPlayVerbs)) + " all day.\n";
        break;
    }
  }
  const std::string feeling(pick(rng, kFeelings));
  s += "At the end of the day, " + hero + " and " + pal + " were very " + feeling + ". ";
  s += hero + " said, \"Thank you, " + pal + ".\" The end.\n";
  return s;
}

// The words of the grammar, for the repeated segments.
Words all_words() {
  Words words;
  for (const Words* list : {&kNames, &kKinds, &kAdjectives, &kObjects, &kColors, &kPlaces, &kPlayVerbs, &kFeelings})
    words.insert(words.end(), list->begin(), list->end());
  return words;
}

}  // namespace

std::vector<std::string> toy_stories(std::uint64_t seed, std::size_t count) {
  SplitMix64 rng(seed);
  std::vector<std::string> stories;
  stories.reserve(count);
  for (std::size_t i = 0; i < count; ++i) stories.push_back(story(rng));
  return stories;
}

std::vector<std::string> repeated_segments(std::uint64_t seed, std::size_t count, const SegmentOptions& options) {
  if (options.min_length == 0 || options.min_length > options.max_length || options.repeats < 2)
    throw UsageError(fmt::format("repeated segments need 1 <= min length <= max length and repeats >= 2 (got {}, {}, {})",
                                 options.min_length, options.max_length, options.repeats));
  static const Words words = all_words();
  // A different stream from toy_stories' for the same seed.
  SplitMix64 rng(seed ^ 0x5EC5EC5EC5EC5EC5ULL);
  std::vector<std::string> docs;
  docs.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const bool letters = rng.below(2) == 0;
    const std::size_t length = options.min_length + rng.below(options.max_length - options.min_length + 1);
    std::string segment;
    for (std::size_t u = 0; u < length; ++u) {
      if (u > 0) segment += ' ';
      if (letters) {
        const std::size_t n = 1 + rng.below(4);
        for (std::size_t k = 0; k < n; ++k) segment += static_cast<char>('a' + rng.below(26));
      } else {
        segment += pick(rng, words);
      }
    }
    std::string doc = segment;
    for (std::size_t r = 1; r < options.repeats; ++r) doc += ' ' + segment;
    docs.push_back(doc + '\n');
  }
  return docs;
}

std::string join_documents(const std::vector<std::string>& documents) {
  std::string text;
  for (const std::string& d : documents) text += d + kEndOfText;
  return text;
}

}  // namespace hooklens::training
