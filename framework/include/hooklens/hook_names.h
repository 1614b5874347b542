// The names of the hook points every hooklens-built model fires (TransformerLens' names), in one
// place. A per-layer point is "blocks.L." followed by its suffix; a model-wide point has no layer.
// Adapters may fire others (TorchScript models fire what their authors named).
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace hooklens::hook_names {

// Model-wide points.
inline constexpr std::string_view embed = "hook_embed";          // [batch, pos, d_model]
inline constexpr std::string_view pos_embed = "hook_pos_embed";  // learned position embeddings only
inline constexpr std::string_view final_norm = "ln_final.hook_normalized";
inline constexpr std::string_view logits = "hook_logits";        // [batch, pos, vocab]

// Suffixes of the per-layer points, in the order a block fires them.
inline constexpr std::string_view resid_pre = "hook_resid_pre";  // [batch, pos, d_model]
inline constexpr std::string_view q = "attn.hook_q";             // [batch, pos, head, d_head]
inline constexpr std::string_view k = "attn.hook_k";
inline constexpr std::string_view v = "attn.hook_v";
inline constexpr std::string_view rot_q = "attn.hook_rot_q";     // rotary models only
inline constexpr std::string_view rot_k = "attn.hook_rot_k";
inline constexpr std::string_view attn_scores = "attn.hook_attn_scores";  // [batch, head, query, key]
inline constexpr std::string_view pattern = "attn.hook_pattern";          // [batch, head, query, key]
inline constexpr std::string_view z = "attn.hook_z";             // [batch, pos, head, d_head]
// Each head's output before the heads are summed, z_h W_O_h without the bias: [batch, pos, head,
// d_model]. Computed only when a hook wants it (attn_out is then its sum over heads plus b_O).
inline constexpr std::string_view result = "attn.hook_result";
inline constexpr std::string_view attn_out = "hook_attn_out";
inline constexpr std::string_view resid_mid = "hook_resid_mid";
inline constexpr std::string_view mlp_pre = "mlp.hook_pre";      // [batch, pos, d_mlp]
inline constexpr std::string_view mlp_pre_linear = "mlp.hook_pre_linear";  // gated MLPs only
inline constexpr std::string_view mlp_post = "mlp.hook_post";    // [batch, pos, d_mlp]: the neurons
inline constexpr std::string_view mlp_out = "hook_mlp_out";
inline constexpr std::string_view resid_post = "hook_resid_post";

// "blocks.L.SUFFIX".
inline std::string in_layer(int layer, std::string_view suffix) {
  return "blocks." + std::to_string(layer) + "." + std::string(suffix);
}
// "blocks.*.SUFFIX": a HookFilter name pattern for that point in every layer.
inline std::string every_layer(std::string_view suffix) { return "blocks.*." + std::string(suffix); }

// The layer of "blocks.L.SUFFIX" for this suffix; nothing for any other name.
inline std::optional<int> layer_of(std::string_view name, std::string_view suffix) {
  constexpr std::string_view prefix = "blocks.";
  if (name.size() <= prefix.size() + suffix.size() + 1 || name.substr(0, prefix.size()) != prefix ||
      name.substr(name.size() - suffix.size()) != suffix || name[name.size() - suffix.size() - 1] != '.')
    return std::nullopt;
  const std::string_view digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size() - 1);
  if (digits.empty() || digits.size() > 9) return std::nullopt;
  int layer = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    layer = layer * 10 + (c - '0');
  }
  return layer;
}

// True if `name` is this point, model-wide ("hook_logits") or in some layer ("blocks.3.mlp.hook_post").
inline bool is_point(std::string_view name, std::string_view point) {
  return name == point || layer_of(name, point).has_value();
}

}  // namespace hooklens::hook_names
