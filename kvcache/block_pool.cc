#include "kvcache/block_pool.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace kvscope::kvcache {
namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

// splitmix64 finalizer: a bijective 64-bit mix.
uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

[[noreturn]] void Die(const char* op, int32_t block, const char* what) {
  std::fprintf(stderr, "BlockPool::%s(%d): %s\n", op, block, what);
  std::abort();
}

}  // namespace

uint64_t HashBlockTokens(uint64_t parent_hash, absl::Span<const int32_t> tokens) {
  uint64_t h = Mix64(parent_hash ^ (kGolden * (tokens.size() + 1)));
  for (int32_t token : tokens) {
    h = Mix64(h + kGolden + static_cast<uint32_t>(token));
  }
  return h;
}

BlockPool::BlockPool(int32_t num_blocks, bool enable_prefix_caching)
    : prefix_caching_(enable_prefix_caching),
      ref_(num_blocks, 0),
      prev_(num_blocks + 1),
      next_(num_blocks + 1),
      in_queue_(num_blocks, 0),
      has_hash_(num_blocks, 0),
      hash_(num_blocks, 0) {
  const int32_t sentinel = num_blocks;
  prev_[sentinel] = next_[sentinel] = sentinel;
  for (int32_t b = 0; b < num_blocks; ++b) PushBack(b);
}

void BlockPool::CheckBlock(int32_t block, const char* op) const {
  if (block < 0 || block >= num_blocks()) Die(op, block, "block id out of range");
}

void BlockPool::Unlink(int32_t block) {
  next_[prev_[block]] = next_[block];
  prev_[next_[block]] = prev_[block];
  in_queue_[block] = 0;
  --num_free_;
}

void BlockPool::PushBack(int32_t block) {
  const int32_t sentinel = num_blocks();
  const int32_t tail = prev_[sentinel];
  prev_[block] = tail;
  next_[block] = sentinel;
  next_[tail] = block;
  prev_[sentinel] = block;
  in_queue_[block] = 1;
  ++num_free_;
}

int32_t BlockPool::Allocate() {
  const int32_t sentinel = num_blocks();
  const int32_t block = next_[sentinel];
  if (block == sentinel) return -1;
  Unlink(block);
  if (has_hash_[block]) {
    cached_.erase(hash_[block]);
    has_hash_[block] = 0;
    ++counters_.evicted_cached_blocks;
  }
  ref_[block] = 1;
  ++counters_.allocations;
  return block;
}

void BlockPool::IncRef(int32_t block) {
  CheckBlock(block, "IncRef");
  if (ref_[block] < 1) Die("IncRef", block, "block is free (use Touch for cached blocks)");
  ++ref_[block];
}

void BlockPool::Free(int32_t block) {
  CheckBlock(block, "Free");
  if (ref_[block] < 1) Die("Free", block, "block is already free");
  if (--ref_[block] == 0) PushBack(block);
}

void BlockPool::FreeBlocks(absl::Span<const int32_t> blocks) {
  for (size_t i = blocks.size(); i-- > 0;) Free(blocks[i]);
}

int32_t BlockPool::RefCount(int32_t block) const {
  CheckBlock(block, "RefCount");
  return ref_[block];
}

int32_t BlockPool::Lookup(uint64_t hash) const {
  if (!prefix_caching_) return -1;
  auto it = cached_.find(hash);
  return it == cached_.end() ? -1 : it->second;
}

void BlockPool::Touch(int32_t block) {
  CheckBlock(block, "Touch");
  if (ref_[block] == 0) Unlink(block);
  ++ref_[block];
  ++counters_.touches;
}

bool BlockPool::CacheBlock(int32_t block, uint64_t hash) {
  CheckBlock(block, "CacheBlock");
  if (ref_[block] < 1) Die("CacheBlock", block, "block is free");
  if (!prefix_caching_) return false;
  if (has_hash_[block]) return hash_[block] == hash;
  if (!cached_.emplace(hash, block).second) return false;
  has_hash_[block] = 1;
  hash_[block] = hash;
  return true;
}

bool BlockPool::IsCached(int32_t block) const {
  CheckBlock(block, "IsCached");
  return has_hash_[block] != 0;
}

std::vector<int32_t> BlockPool::FreeQueue() const {
  std::vector<int32_t> out;
  out.reserve(num_free_);
  for (int32_t b = next_[num_blocks()]; b != num_blocks(); b = next_[b]) out.push_back(b);
  return out;
}

absl::Status BlockPool::CheckInvariants() const {
  const int32_t n = num_blocks();
  int32_t zero_refs = 0;
  for (int32_t b = 0; b < n; ++b) {
    if (ref_[b] < 0) return absl::InternalError(absl::StrCat("block ", b, " has ref ", ref_[b]));
    if ((ref_[b] == 0) != (in_queue_[b] != 0)) {
      return absl::InternalError(absl::StrCat("block ", b, " with ref ", ref_[b],
                                              in_queue_[b] ? " is" : " is not", " queued"));
    }
    zero_refs += ref_[b] == 0;
    if (has_hash_[b]) {
      auto it = cached_.find(hash_[b]);
      if (it == cached_.end() || it->second != b) {
        return absl::InternalError(absl::StrCat("block ", b, "'s hash is not mapped to it"));
      }
    }
  }
  if (zero_refs != num_free_ || num_free_ + num_used() != n) {
    return absl::InternalError(absl::StrCat("free count ", num_free_, " but ", zero_refs,
                                            " blocks have ref 0 (total ", n, ")"));
  }
  // Walk the queue both ways.
  int32_t count = 0;
  for (int32_t b = next_[n], p = n; b != n; p = b, b = next_[b]) {
    if (b < 0 || b > n || prev_[b] != p || !in_queue_[b] || ++count > n) {
      return absl::InternalError(absl::StrCat("free queue broken at block ", b));
    }
  }
  if (count != num_free_) {
    return absl::InternalError(
        absl::StrCat("free queue holds ", count, " blocks, free count ", num_free_));
  }
  for (const auto& [hash, block] : cached_) {
    if (block < 0 || block >= n || !has_hash_[block] || hash_[block] != hash) {
      return absl::InternalError(
          absl::StrCat("cached hash maps to block ", block, " which does not carry it"));
    }
  }
  if (!prefix_caching_ && !cached_.empty()) {
    return absl::InternalError("blocks are cached with prefix caching off");
  }
  return absl::OkStatus();
}

}  // namespace kvscope::kvcache
