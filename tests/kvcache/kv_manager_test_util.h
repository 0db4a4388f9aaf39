// Helpers shared by the KV manager tests: a small geometry, budgets in blocks, token lists.
#ifndef KVSCOPE_TESTS_KVCACHE_KV_MANAGER_TEST_UTIL_H_
#define KVSCOPE_TESTS_KVCACHE_KV_MANAGER_TEST_UTIL_H_

#include <cstdint>
#include <vector>

#include "kvcache/kv_manager.h"

namespace kvscope::kvcache::testing {

// 2 layers, 2 KV heads of dim 4, float32: 128 bytes per token.
inline KvGeometry SmallGeometry() {
  KvGeometry g;
  g.num_layers = 2;
  g.kv_heads_per_rank = 2;
  g.head_dim = 4;
  g.bytes_per_element = 4;
  g.num_heads_per_rank = 4;
  return g;
}

inline constexpr int64_t kBytesPerToken = 128;

// A budget of exactly `blocks` blocks of `block_size` tokens.
inline KvManagerContext ContextForBlocks(int64_t blocks, int32_t block_size = 16,
                                         int64_t max_model_len = 4096) {
  KvManagerContext context;
  context.geometry = SmallGeometry();
  context.kv_memory_bytes = blocks * block_size * kBytesPerToken;
  context.max_model_len = max_model_len;
  return context;
}

// n distinct token ids; different `stream`s share no token.
inline std::vector<int32_t> Tokens(int n, int stream) {
  std::vector<int32_t> out(n);
  for (int i = 0; i < n; ++i) out[i] = stream * 100000 + i;
  return out;
}

inline std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

inline SeqRequest Request(int64_t id, const std::vector<int32_t>& tokens,
                          int32_t max_new_tokens = 16) {
  return SeqRequest{id, tokens, max_new_tokens};
}

}  // namespace kvscope::kvcache::testing

#endif  // KVSCOPE_TESTS_KVCACHE_KV_MANAGER_TEST_UTIL_H_
