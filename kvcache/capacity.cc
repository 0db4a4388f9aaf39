#include "kvcache/capacity.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "common/units.h"

namespace kvscope::kvcache {

absl::Status ValidateGeometry(const KvGeometry& g) {
  if (g.num_layers <= 0 || g.kv_heads_per_rank <= 0 || g.head_dim <= 0 ||
      g.bytes_per_element <= 0 || g.tp_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid KV geometry: layers ", g.num_layers, ", KV heads per rank ",
                     g.kv_heads_per_rank, ", head_dim ", g.head_dim, ", bytes per element ",
                     g.bytes_per_element, ", tp ", g.tp_size, " (all must be positive)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int32_t> BlocksForBudget(int64_t budget_bytes, int32_t block_size,
                                        const KvGeometry& geometry, const std::string& what) {
  if (absl::Status s = ValidateGeometry(geometry); !s.ok()) return s;
  if (block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be >= 1, got ", block_size));
  }
  const int64_t per_token = geometry.BytesPerToken();
  const int64_t block_bytes = per_token * block_size;
  const int64_t blocks = budget_bytes < 0 ? 0 : budget_bytes / block_bytes;
  if (blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " of ", budget_bytes, " bytes (", FormatBytes(budget_bytes),
        ") cannot hold one block: a block of ", block_size, " tokens needs ", block_bytes,
        " bytes (", FormatBytes(block_bytes), "; ", per_token, " bytes per token per rank)"));
  }
  if (blocks > std::numeric_limits<int32_t>::max() / block_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " of ", FormatBytes(budget_bytes), " buys ", blocks, " blocks of ",
                     block_size, " tokens: more than the 2^31 slots a pool can address"));
  }
  return static_cast<int32_t>(blocks);
}

}  // namespace kvscope::kvcache
