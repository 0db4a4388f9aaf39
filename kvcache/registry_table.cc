// The table of KV strategies behind registry.h. To add one: write a function returning its
// StrategyInfo (name, description, parameter specs, factory) and list it in
// RegisteredStrategies().
#include "kvcache/contiguous_kv_manager.h"
#include "kvcache/paged_kv_manager.h"
#include "kvcache/registry.h"

namespace kvscope::kvcache {
namespace {

ParamSpec Param(const char* name, ParamType type, const char* default_value, const char* help,
                double min = -1e300, double max = 1e300) {
  ParamSpec spec;
  spec.name = name;
  spec.type = type;
  spec.default_value = default_value;
  spec.help = help;
  spec.min = min;
  spec.max = max;
  return spec;
}

ParamSpec ChoiceParam(const char* name, const char* default_value, const char* help,
                      std::vector<std::string> choices) {
  ParamSpec spec = Param(name, ParamType::kChoice, default_value, help);
  spec.choices = std::move(choices);
  return spec;
}

ParamSpec BlockSizeParam() {
  return Param("block_size", ParamType::kInt, "16", "tokens per KV block", 1, 1024);
}

StrategyInfo Contiguous() {
  StrategyInfo info;
  info.name = "contiguous";
  info.description =
      "reserves each sequence's whole length at admission (HF / FasterTransformer style)";
  info.params = {
      BlockSizeParam(),
      ChoiceParam("reserve", "max_model_len", "tokens reserved per sequence",
                  {"max_model_len", "prompt_plus_output"}),
  };
  info.create = [](const StrategyParams& p,
                   const KvManagerContext& context) -> absl::StatusOr<std::unique_ptr<KvManager>> {
    ContiguousKvManager::Options options;
    options.block_size = static_cast<int32_t>(p.Int("block_size"));
    options.reserve = p.Choice("reserve") == "max_model_len"
                          ? ContiguousKvManager::Reserve::kMaxModelLen
                          : ContiguousKvManager::Reserve::kPromptPlusOutput;
    auto manager = ContiguousKvManager::Create(context, options);
    if (!manager.ok()) return manager.status();
    return std::unique_ptr<KvManager>(std::move(*manager));
  };
  return info;
}

StrategyInfo Paged() {
  StrategyInfo info;
  info.name = "paged";
  info.description =
      "vLLM PagedAttention: blocks on demand, prefix caching, copy-on-write, swap or recompute";
  info.params = {
      BlockSizeParam(),
      Param("watermark", ParamType::kDouble, "0.01",
            "fraction of blocks kept free at admission and swap-in", 0.0, 0.5),
      Param("enable_prefix_caching", ParamType::kBool, "true", "automatic prefix caching"),
      ChoiceParam("preemption_mode", "recompute", "how preempted sequences give up their KV",
                  {"recompute", "swap"}),
      Param("swap_space", ParamType::kBytes, "0",
            "host swap pool with preemption_mode=swap (0 = as large as the KV memory)", 0),
  };
  info.create = [](const StrategyParams& p,
                   const KvManagerContext& context) -> absl::StatusOr<std::unique_ptr<KvManager>> {
    PagedKvManager::Options options;
    options.block_size = static_cast<int32_t>(p.Int("block_size"));
    options.watermark = p.Double("watermark");
    options.enable_prefix_caching = p.Bool("enable_prefix_caching");
    options.swap = p.Choice("preemption_mode") == "swap";
    options.swap_space_bytes = p.Int("swap_space");
    auto manager = PagedKvManager::Create(context, options);
    if (!manager.ok()) return manager.status();
    return std::unique_ptr<KvManager>(std::move(*manager));
  };
  return info;
}

}  // namespace

const std::vector<StrategyInfo>& RegisteredStrategies() {
  static const std::vector<StrategyInfo>* const strategies =
      new std::vector<StrategyInfo>{Contiguous(), Paged()};
  return *strategies;
}

}  // namespace kvscope::kvcache
