// What a toy model directory holds before training: its config.json and its initial tensors, named
// as the real checkpoints name them (GPT-Neo as Hugging Face's GPTNeoForCausalLM saves it; LLaDA as
// LLaDA-8B ships, "model.transformer.blocks.N..."), so that the adapters read them unchanged.
#pragma once
#include "train.h"

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace hooklens::training {

struct ToyVocabulary {
  std::int64_t size = 0;
  std::int64_t end_of_text_id = -1;
  std::optional<std::int64_t> mask_id;  // LLaDA's mask token
};

nlohmann::json toy_config(ToyArchitecture architecture, const ToyShape& shape, const ToyVocabulary& vocabulary);

// Initial weights, in the order they are written: normal(0, 0.02) matrices and embeddings, the
// projections back into the residual stream scaled by 1/sqrt(2 * layers) (GPT-2's initialisation),
// norms one, biases zero; GPT-Neo's learned positions start as sinusoids (toy_architecture.cpp says
// why). Drawn from a CPU generator seeded with `seed`: the same on every machine.
std::vector<std::pair<std::string, at::Tensor>> initial_weights(ToyArchitecture architecture, const ToyShape& shape,
                                                                const ToyVocabulary& vocabulary, std::uint64_t seed);

}  // namespace hooklens::training
