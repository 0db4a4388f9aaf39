// File: kvcache/registry.h
//
// Strategies by name, with typed and validated parameters: `--strategy paged
// --strategy-param block_size=32 --strategy-param enable_prefix_caching=false`.
// An unknown strategy or parameter, or a value of the wrong type or out of range, is an
// InvalidArgument error that lists what is allowed, before any work starts.
#ifndef KVSCOPE_KVCACHE_REGISTRY_H_
#define KVSCOPE_KVCACHE_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvcache/kv_manager.h"

namespace kvscope::kvcache {

enum class ParamType { kInt, kDouble, kBool, kBytes, kChoice };

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::kInt;
  std::string default_value;         // as the user would write it
  std::string help;
  std::vector<std::string> choices;  // kChoice
  double min = -1e300, max = 1e300;  // inclusive bounds for kInt, kDouble, kBytes
};

// Validated values of one strategy's parameters (defaults filled in).
class StrategyParams {
 public:
  int64_t Int(const std::string& name) const;      // kInt and kBytes
  double Double(const std::string& name) const;
  bool Bool(const std::string& name) const;
  const std::string& Choice(const std::string& name) const;
  // Whether the user gave the parameter (rather than the default).
  bool IsSet(const std::string& name) const;
  // name -> value as given or defaulted, for result files.
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  friend absl::StatusOr<StrategyParams> ParseStrategyParams(
      const std::string&, const std::map<std::string, std::string>&);
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> set_;
};

struct StrategyInfo {
  std::string name;
  std::string description;
  std::vector<ParamSpec> params;
  std::function<absl::StatusOr<std::unique_ptr<KvManager>>(const StrategyParams&,
                                                           const KvManagerContext&)>
      create;
};

// Every registered strategy, in a stable order.
const std::vector<StrategyInfo>& RegisteredStrategies();

// Validates `raw` (name -> text) against the strategy's parameter specs.
absl::StatusOr<StrategyParams> ParseStrategyParams(const std::string& strategy,
                                                   const std::map<std::string, std::string>& raw);

// Parses the parameters and builds the manager. Besides bad parameters, fails with
// InvalidArgument when the budget cannot hold even one block / one sequence's reservation,
// saying how much is needed.
absl::StatusOr<std::unique_ptr<KvManager>> CreateKvManager(
    const std::string& strategy, const std::map<std::string, std::string>& raw,
    const KvManagerContext& context);

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_REGISTRY_H_
