// File: kvcache/capacity.h
//
// Capacity planning shared by the block-based managers: how many blocks of `block_size`
// tokens a byte budget buys, given what one token costs (KvGeometry::BytesPerToken).
#ifndef KVSCOPE_KVCACHE_CAPACITY_H_
#define KVSCOPE_KVCACHE_CAPACITY_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvcache/kv_manager.h"

namespace kvscope::kvcache {

// InvalidArgument unless every dimension is positive.
absl::Status ValidateGeometry(const KvGeometry& geometry);

// floor(budget_bytes / (block_size * BytesPerToken)). InvalidArgument, saying the bytes one
// block needs, when that is < 1; also when the slots (block * block_size + offset, int32)
// would overflow. `what` names the budget in messages ("KV memory", "swap space").
absl::StatusOr<int32_t> BlocksForBudget(int64_t budget_bytes, int32_t block_size,
                                        const KvGeometry& geometry, const std::string& what);

}  // namespace kvscope::kvcache

#endif  // KVSCOPE_KVCACHE_CAPACITY_H_
