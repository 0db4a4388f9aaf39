// The table of KV strategies behind registry.h. To add one: write a function returning its
// StrategyInfo (name, description, parameter specs, factory) and list it in
// RegisteredStrategies().
#include "absl/strings/str_cat.h"
#include "kvcache/contiguous_kv_manager.h"
#include "kvcache/h2o_kv_manager.h"
#include "kvcache/infinigen_kv_manager.h"
#include "kvcache/paged_kv_manager.h"
#include "kvcache/registry.h"
#include "kvcache/streaming_kv_manager.h"

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

ParamSpec KvBudgetParam() {
  return Param("kv_budget", ParamType::kDouble, "0",
               "common sparsity knob: kept tokens / (prompt + generated), in (0, 1]; 0 = unset; "
               "the strategy's own parameters override it",
               0.0, 1.0);
}

// kv_budget given explicitly must be in (0, 1] (0 is only the "unset" default).
absl::Status CheckKvBudget(const char* strategy, const StrategyParams& p) {
  if (p.IsSet("kv_budget") && !(p.Double("kv_budget") > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("strategy ", strategy, ": kv_budget=",
                                                   p.Double("kv_budget"),
                                                   " must be in (0, 1]"));
  }
  return absl::OkStatus();
}

StrategyInfo H2o() {
  StrategyInfo info;
  info.name = "h2o";
  info.description =
      "H2O heavy hitters + recent window per layer and KV head, prompt compressed after prefill";
  info.params = {
      Param("heavy_ratio", ParamType::kDouble, "0.1", "heavy hitters as a fraction of the prompt",
            0.0, 1.0),
      Param("recent_ratio", ParamType::kDouble, "0.1", "recent window as a fraction of the prompt",
            0.0, 1.0),
      Param("heavy_size", ParamType::kInt, "0", "heavy hitters in tokens (overrides heavy_ratio)",
            0, 1 << 30),
      Param("recent_size", ParamType::kInt, "0", "recent window in tokens (overrides recent_ratio)",
            0, 1 << 30),
      KvBudgetParam(),
  };
  info.create = [](const StrategyParams& p,
                   const KvManagerContext& context) -> absl::StatusOr<std::unique_ptr<KvManager>> {
    if (absl::Status s = CheckKvBudget("h2o", p); !s.ok()) return s;
    H2oOptions options;
    const bool budget = p.IsSet("kv_budget");
    options.heavy_ratio = p.Double("heavy_ratio");
    options.recent_ratio = p.Double("recent_ratio");
    // kv_budget is a fraction of prompt + generated tokens, split evenly (section 7).
    if (budget && !p.IsSet("heavy_ratio")) options.heavy_total_fraction = p.Double("kv_budget") / 2;
    if (budget && !p.IsSet("recent_ratio")) {
      options.recent_total_fraction = p.Double("kv_budget") / 2;
    }
    if (p.IsSet("heavy_size")) options.heavy_size = p.Int("heavy_size");
    if (p.IsSet("recent_size")) options.recent_size = p.Int("recent_size");
    auto manager = CreateH2oKvManager(context, options);
    if (!manager.ok()) return manager.status();
    return std::unique_ptr<KvManager>(std::move(*manager));
  };
  return info;
}

StrategyInfo Streaming() {
  StrategyInfo info;
  info.name = "streaming";
  info.description =
      "StreamingLLM: attention sinks + recent window, prompt compressed after prefill; "
      "positions=original keeps each key's position in the sequence, positions=rolling uses "
      "positions in the cache (sinks 0..S-1, window next; RoPE models only)";
  info.params = {
      Param("sink_tokens", ParamType::kInt, "4", "first tokens always kept", 0, 1 << 30),
      Param("recent_size", ParamType::kInt, "2000",
            "recent window in tokens (default from kv_budget when that is given)", 0, 1 << 30),
      KvBudgetParam(),
      ChoiceParam("positions", "original",
                  "key positions: original (each key's position in the sequence, as "
                  "written) or rolling (positions in the cache, as StreamingLLM; sink keys "
                  "re-rotated as tokens are evicted; RoPE models only)",
                  {"original", "rolling"}),
  };
  info.create = [](const StrategyParams& p,
                   const KvManagerContext& context) -> absl::StatusOr<std::unique_ptr<KvManager>> {
    if (absl::Status s = CheckKvBudget("streaming", p); !s.ok()) return s;
    StreamingOptions options;
    options.sink_tokens = p.Int("sink_tokens");
    options.recent_size = p.Int("recent_size");
    if (p.IsSet("kv_budget") && !p.IsSet("recent_size")) options.kv_budget = p.Double("kv_budget");
    options.rolling_positions = p.Choice("positions") == "rolling";
    auto manager = CreateStreamingKvManager(context, options);
    if (!manager.ok()) return manager.status();
    return std::unique_ptr<KvManager>(std::move(*manager));
  };
  return info;
}

StrategyInfo Infinigen() {
  StrategyInfo info;
  info.name = "infinigen";
  info.description =
      "InfiniGen: full KV in a host pool, skewed partial keys speculate which tokens each "
      "layer loads (layers 0-1 load all)";
  info.params = {
      Param("alpha", ParamType::kDouble, "-1",
            "select tokens within alpha of the max partial score (-1 = family default: 4 OPT, "
            "5 Llama; explicit values must be >= 0)",
            -1.0, 1e6),
      Param("partial_ratio", ParamType::kDouble, "0.2",
            "fraction of each head's skewed columns in the partial query/key", 0.0, 1.0),
      Param("max_kv_ratio", ParamType::kDouble, "0.2",
            "max_num_kv as a fraction of prompt + output (default from kv_budget when given)",
            0.0, 1.0),
      Param("max_num_kv", ParamType::kInt, "0",
            "most tokens a layer loads per step (overrides max_kv_ratio; 0 = unset)", 0, 1 << 30),
      Param("host_capacity", ParamType::kDouble, "1",
            "host pool limit per layer and head as a fraction of prompt + output (1 = none; "
            "counter-based eviction beyond it)",
            0.0, 1.0),
      Param("dense_layers", ParamType::kInt, "2",
            "first layers that always load their full KV (the reference: 2)", 1, 1 << 20),
      Param("calibration_tokens", ParamType::kInt, "256",
            "length of the seeded random calibration prompt for the skewing SVD", 2, 1 << 20),
      Param("calibration_seed", ParamType::kInt, "0", "seed of the calibration prompt", 0,
            1e15),
      Param("mass_sample_interval", ParamType::kInt, "8",
            "measure the captured attention mass every N-th decode step (0 = never)", 0,
            1 << 30),
      KvBudgetParam(),
  };
  info.create = [](const StrategyParams& p,
                   const KvManagerContext& context) -> absl::StatusOr<std::unique_ptr<KvManager>> {
    if (absl::Status s = CheckKvBudget("infinigen", p); !s.ok()) return s;
    InfinigenOptions options;
    if (p.IsSet("alpha")) {
      if (!(p.Double("alpha") >= 0.0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("strategy infinigen: alpha=", p.Double("alpha"), " must be >= 0"));
      }
      options.alpha = p.Double("alpha");
    }
    options.partial_ratio = p.Double("partial_ratio");
    options.max_kv_ratio = p.IsSet("max_kv_ratio") || !p.IsSet("kv_budget")
                               ? p.Double("max_kv_ratio")
                               : p.Double("kv_budget");
    if (p.IsSet("max_num_kv")) options.max_num_kv = p.Int("max_num_kv");
    options.host_capacity = p.Double("host_capacity");
    options.calibration_tokens = static_cast<int32_t>(p.Int("calibration_tokens"));
    options.calibration_seed = static_cast<uint64_t>(p.Int("calibration_seed"));
    options.calibration_ids = context.calibration_ids;
    options.mass_sample_interval = static_cast<int32_t>(p.Int("mass_sample_interval"));
    options.dense_layers = static_cast<int32_t>(p.Int("dense_layers"));
    auto manager = InfinigenKvManager::Create(context, options);
    if (!manager.ok()) return manager.status();
    return std::unique_ptr<KvManager>(std::move(*manager));
  };
  return info;
}

}  // namespace

const std::vector<StrategyInfo>& RegisteredStrategies() {
  static const std::vector<StrategyInfo>* const strategies =
      new std::vector<StrategyInfo>{Contiguous(), Paged(), H2o(), Streaming(), Infinigen()};
  return *strategies;
}

}  // namespace kvscope::kvcache
