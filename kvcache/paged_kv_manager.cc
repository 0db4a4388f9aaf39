#include "kvcache/paged_kv_manager.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/capacity.h"

namespace kvscope::kvcache {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<std::unique_ptr<PagedKvManager>> PagedKvManager::Create(
    const KvManagerContext& context, const Options& options) {
  if (options.block_size < 1 || options.block_size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be in [1, 1024], got ", options.block_size));
  }
  if (!(options.watermark >= 0.0 && options.watermark <= 0.5)) {
    return absl::InvalidArgumentError(
        absl::StrCat("watermark must be in [0, 0.5], got ", options.watermark));
  }
  if (options.swap_space_bytes < 0) {
    return absl::InvalidArgumentError("swap_space must not be negative");
  }
  KVSCOPE_ASSIGN_OR_RETURN(
      const int32_t num_blocks,
      BlocksForBudget(context.kv_memory_bytes, options.block_size, context.geometry, "KV memory"));
  int32_t num_host_blocks = 0;
  if (options.swap) {
    const int64_t bytes =
        options.swap_space_bytes > 0 ? options.swap_space_bytes : context.kv_memory_bytes;
    KVSCOPE_ASSIGN_OR_RETURN(num_host_blocks, BlocksForBudget(bytes, options.block_size,
                                                              context.geometry, "swap space"));
  }
  return std::unique_ptr<PagedKvManager>(
      new PagedKvManager(context, options, num_blocks, num_host_blocks));
}

PagedKvManager::PagedKvManager(const KvManagerContext& context, const Options& options,
                               int32_t num_blocks, int32_t num_host_blocks)
    : context_(context),
      options_(options),
      watermark_blocks_(static_cast<int32_t>(options.watermark * num_blocks)),
      device_(num_blocks, options.enable_prefix_caching),
      fill_(num_blocks, 0),
      pending_dst_(num_blocks, 0) {
  device_pins_.pinned.assign(num_blocks, 0);
  if (options.swap) {
    host_.emplace(num_host_blocks, /*enable_prefix_caching=*/false);
    host_pins_.pinned.assign(num_host_blocks, 0);
  }
}

// ---------------------------------------------------------------------------------------
// Block helpers

int32_t PagedKvManager::AllocateDevice() {
  const int32_t block = device_.Allocate();  // callers checked num_free()
  fill_[block] = 0;
  ++held_blocks_;
  return block;
}

void PagedKvManager::ShareDevice(int32_t block, bool prefix_hit) {
  if (Holders(block) == 0) {
    ++held_blocks_;
    used_tokens_ += fill_[block];
  }
  if (prefix_hit) {
    device_.Touch(block);
  } else {
    device_.IncRef(block);
  }
}

void PagedKvManager::ReleaseDevice(int32_t block) {
  device_.Free(block);
  if (Holders(block) == 0) {
    --held_blocks_;
    used_tokens_ -= fill_[block];
  }
}

void PagedKvManager::ReleaseDeviceBlocks(absl::Span<const int32_t> blocks) {
  for (size_t i = blocks.size(); i-- > 0;) ReleaseDevice(blocks[i]);
}

void PagedKvManager::Pin(BlockPool& pool, Pins& pins, int32_t block) {
  if (pins.pinned[block]) return;
  pool.IncRef(block);  // pinned blocks are always in use when pinned
  pins.pinned[block] = 1;
  pins.list.push_back(block);
}

void PagedKvManager::Unpin(BlockPool& pool, Pins& pins) {
  for (int32_t block : pins.list) {
    pins.pinned[block] = 0;
    pool.Free(block);
  }
  pins.list.clear();
}

void PagedKvManager::MarkPendingDst(int32_t block) {
  if (pending_dst_[block]) return;
  pending_dst_[block] = 1;
  pending_dst_list_.push_back(block);
}

void PagedKvManager::CacheIfFull(Sequence& seq) {
  const int32_t bs = options_.block_size;
  const int32_t n = seq.table.num_tokens();
  if (n % bs != 0) return;
  const size_t index = n / bs - 1;
  if (seq.hashes.size() > index) return;
  const uint64_t parent = index == 0 ? kNoneBlockHash : seq.hashes[index - 1];
  const uint64_t hash =
      HashBlockTokens(parent, absl::MakeConstSpan(seq.tokens).subspan(index * bs, bs));
  seq.hashes.push_back(hash);
  device_.CacheBlock(seq.table.blocks[index], hash);
}

void PagedKvManager::LookupPrefix(absl::Span<const int32_t> tokens, std::vector<int32_t>* blocks,
                                  std::vector<uint64_t>* hashes) const {
  blocks->clear();
  hashes->clear();
  if (!device_.prefix_caching()) return;
  const size_t bs = options_.block_size;
  uint64_t parent = kNoneBlockHash;
  for (size_t j = 0; (j + 1) * bs <= tokens.size(); ++j) {
    const uint64_t hash = HashBlockTokens(parent, tokens.subspan(j * bs, bs));
    const int32_t block = device_.Lookup(hash);
    if (block < 0) break;
    blocks->push_back(block);
    hashes->push_back(hash);
    parent = hash;
  }
  // A full hit gives back its last block: the last token must be computed for logits.
  if (!blocks->empty() && blocks->size() * bs == tokens.size()) {
    blocks->pop_back();
    hashes->pop_back();
  }
}

// ---------------------------------------------------------------------------------------
// Admission and growth

Admission PagedKvManager::CanAdmit(const SeqRequest& seq) const {
  const int64_t n = static_cast<int64_t>(seq.tokens.size());
  if (n == 0) {
    return {AdmitStatus::kNever, absl::StrCat("sequence ", seq.seq_id, " has no tokens")};
  }
  const int64_t bs = options_.block_size;
  const int64_t prompt_blocks = CeilDiv(n, bs);
  const int64_t total = device_.num_blocks();
  if (total - prompt_blocks < watermark_blocks_) {
    return {AdmitStatus::kNever,
            absl::StrCat("prompt of ", n, " tokens needs ", prompt_blocks, " blocks of ", bs,
                         " tokens but the KV pool holds ", total, " blocks (", total * bs,
                         " tokens) and keeps ", watermark_blocks_, " free (watermark)")};
  }
  std::vector<int32_t> hits;
  std::vector<uint64_t> hashes;
  LookupPrefix(seq.tokens, &hits, &hashes);
  int64_t required = prompt_blocks - static_cast<int64_t>(hits.size());
  for (int32_t block : hits) required += device_.RefCount(block) == 0;  // leaves the queue
  if (device_.num_free() - required >= watermark_blocks_) return {AdmitStatus::kOk, ""};
  return {AdmitStatus::kLater, ""};
}

absl::StatusOr<int32_t> PagedKvManager::Admit(const SeqRequest& seq) {
  if (seqs_.contains(seq.seq_id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq.seq_id, " is already admitted"));
  }
  const Admission admission = CanAdmit(seq);
  switch (admission.status) {
    case AdmitStatus::kOk:
      break;
    case AdmitStatus::kNever:
      return absl::InvalidArgumentError(admission.reason);
    case AdmitStatus::kLater:
      return absl::ResourceExhaustedError(
          absl::StrCat("sequence ", seq.seq_id, " cannot be admitted now: ", device_.num_free(),
                       " free blocks, watermark ", watermark_blocks_));
  }
  std::vector<int32_t> hits;
  std::vector<uint64_t> hashes;
  LookupPrefix(seq.tokens, &hits, &hashes);
  Sequence& s = seqs_[seq.seq_id];
  const int32_t bs = options_.block_size;
  const int32_t cached = static_cast<int32_t>(hits.size()) * bs;
  const int64_t expected =
      static_cast<int64_t>(seq.tokens.size()) + std::max<int64_t>(0, seq.max_new_tokens);
  s.table.blocks.reserve(CeilDiv(expected, bs));
  s.table.slots.reserve(expected);
  s.table.positions.reserve(expected);
  for (int32_t block : hits) {
    ShareDevice(block, /*prefix_hit=*/true);
    s.table.blocks.push_back(block);
    for (int32_t i = 0; i < bs; ++i) s.table.PushToken(bs);
  }
  if (device_.prefix_caching()) {
    s.tokens.reserve(expected);
    s.tokens.assign(seq.tokens.begin(), seq.tokens.begin() + cached);
    s.hashes = std::move(hashes);
    counters_.prefix_query_tokens += static_cast<int64_t>(seq.tokens.size());
    counters_.prefix_hit_tokens += cached;
  }
  return cached;
}

bool PagedKvManager::Append(int64_t seq_id, absl::Span<const int32_t> tokens) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || it->second.swapped) return false;
  if (tokens.empty()) return true;
  Sequence& s = it->second;
  BlockTable& table = s.table;
  const int32_t bs = options_.block_size;
  const int64_t n = table.num_tokens();
  const int64_t new_blocks = CeilDiv(n + static_cast<int64_t>(tokens.size()), bs) -
                             static_cast<int64_t>(table.blocks.size());
  const bool cow = n % bs != 0 && Holders(table.blocks.back()) > 1;
  if (device_.num_free() < new_blocks + (cow ? 1 : 0)) return false;
  if (cow) {
    // The last block is partially filled and shared (a fork): copy it before writing.
    const int32_t src = table.blocks.back();
    const int32_t dst = AllocateDevice();
    fill_[dst] = fill_[src];
    used_tokens_ += fill_[src];
    pending_copies_.push_back({src, dst});
    Pin(device_, device_pins_, src);
    Pin(device_, device_pins_, dst);
    MarkPendingDst(dst);
    ReleaseDevice(src);
    table.ReplaceBlock(table.blocks.size() - 1, dst, bs);
    ++counters_.cow_copies;
  }
  const bool caching = device_.prefix_caching();
  for (int32_t token : tokens) {
    if (table.num_tokens() % bs == 0) table.blocks.push_back(AllocateDevice());
    table.PushToken(bs);
    ++fill_[table.blocks.back()];
    ++used_tokens_;
    if (caching) {
      s.tokens.push_back(token);
      CacheIfFull(s);
    }
  }
  return true;
}

void PagedKvManager::Free(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  Sequence& s = it->second;
  if (s.swapped) {
    host_->FreeBlocks(s.table.blocks);
    host_held_blocks_ -= static_cast<int64_t>(s.table.blocks.size());
    swapped_tokens_ -= s.table.num_tokens();
  } else {
    ReleaseDeviceBlocks(s.table.blocks);
  }
  seqs_.erase(it);
}

// ---------------------------------------------------------------------------------------
// Swap and fork

bool PagedKvManager::SwapOut(int64_t seq_id) {
  if (!host_) return false;
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || it->second.swapped) return false;
  Sequence& s = it->second;
  const std::vector<int32_t>& blocks = s.table.blocks;
  for (int32_t block : blocks) {
    if (pending_dst_[block]) return false;  // would be read before it is written
  }
  if (host_->num_free() < static_cast<int32_t>(blocks.size())) return false;
  std::vector<int32_t> host_blocks(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    host_blocks[i] = host_->Allocate();
    pending_swap_out_.push_back({blocks[i], host_blocks[i]});
  }
  ReleaseDeviceBlocks(blocks);
  s.table.blocks = std::move(host_blocks);
  s.swapped = true;
  host_held_blocks_ += static_cast<int64_t>(s.table.blocks.size());
  swapped_tokens_ += s.table.num_tokens();
  counters_.swapped_out_blocks += static_cast<int64_t>(s.table.blocks.size());
  return true;
}

bool PagedKvManager::CanSwapIn(int64_t seq_id) const {
  if (!host_) return false;
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || !it->second.swapped) return false;
  return device_.num_free() - static_cast<int64_t>(it->second.table.blocks.size()) >=
         watermark_blocks_;
}

absl::Status PagedKvManager::SwapIn(int64_t seq_id) {
  if (!host_) return absl::FailedPreconditionError("paged: preemption_mode is not swap");
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq_id, " is not tracked"));
  }
  Sequence& s = it->second;
  if (!s.swapped) {
    return absl::FailedPreconditionError(absl::StrCat("sequence ", seq_id, " is not swapped out"));
  }
  if (!CanSwapIn(seq_id)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "sequence ", seq_id, " needs ", s.table.blocks.size(), " device blocks plus the ",
        watermark_blocks_, "-block watermark; ", device_.num_free(), " are free"));
  }
  const int32_t bs = options_.block_size;
  const int32_t n = s.table.num_tokens();
  std::vector<int32_t> device_blocks(s.table.blocks.size());
  for (size_t i = 0; i < device_blocks.size(); ++i) {
    const int32_t dst = AllocateDevice();
    fill_[dst] = std::min<int32_t>(bs, n - static_cast<int32_t>(i) * bs);
    used_tokens_ += fill_[dst];
    pending_swap_in_.push_back({s.table.blocks[i], dst});
    Pin(*host_, host_pins_, s.table.blocks[i]);
    MarkPendingDst(dst);
    device_blocks[i] = dst;
  }
  host_->FreeBlocks(s.table.blocks);
  host_held_blocks_ -= static_cast<int64_t>(device_blocks.size());
  swapped_tokens_ -= n;
  counters_.swapped_in_blocks += static_cast<int64_t>(device_blocks.size());
  s.table.blocks = std::move(device_blocks);
  s.table.RebuildSlots(bs);
  s.swapped = false;
  // The full blocks are cacheable again (a no-op where an identical block is cached).
  for (size_t j = 0; j < s.hashes.size(); ++j) device_.CacheBlock(s.table.blocks[j], s.hashes[j]);
  return absl::OkStatus();
}

absl::Status PagedKvManager::Fork(int64_t parent, int64_t child) {
  auto it = seqs_.find(parent);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrCat("fork: parent ", parent, " is not tracked"));
  }
  if (it->second.swapped) {
    return absl::FailedPreconditionError(absl::StrCat("fork: parent ", parent, " is swapped out"));
  }
  if (seqs_.contains(child)) {
    return absl::AlreadyExistsError(absl::StrCat("fork: child ", child, " already exists"));
  }
  Sequence copy = it->second;
  for (int32_t block : copy.table.blocks) ShareDevice(block, /*prefix_hit=*/false);
  seqs_.emplace(child, std::move(copy));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// Step plan, accounting

int32_t PagedKvManager::NumTokens(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || it->second.swapped) return 0;
  return it->second.table.num_tokens();
}

absl::StatusOr<const StepPlan*> PagedKvManager::Plan(absl::Span<const SeqStep> steps) {
  auto find = [this](int64_t id) -> BlockTable* {
    auto it = seqs_.find(id);
    return it == seqs_.end() || it->second.swapped ? nullptr : &it->second.table;
  };
  KVSCOPE_RETURN_IF_ERROR(FillStepPlan(steps, find, ++plan_stamp_, &planned_.plan));
  StepPlan& plan = planned_.plan;
  plan.swap_out.swap(pending_swap_out_);
  plan.swap_in.swap(pending_swap_in_);
  plan.copies.swap(pending_copies_);
  pending_swap_out_.clear();
  pending_swap_in_.clear();
  pending_copies_.clear();
  for (int32_t block : pending_dst_list_) pending_dst_[block] = 0;
  pending_dst_list_.clear();
  Unpin(device_, device_pins_);
  if (host_) Unpin(*host_, host_pins_);
  ++planned_.generation;
  return &plan;
}

KvUsage PagedKvManager::Usage() const {
  KvUsage usage;
  const int64_t per_token = context_.geometry.BytesPerToken();
  usage.reserved_bytes = held_blocks_ * BlockBytes();
  usage.used_bytes = used_tokens_ * per_token;
  usage.host_bytes = host_held_blocks_ * BlockBytes();
  usage.swapped_bytes = swapped_tokens_ * per_token;
  usage.capacity_bytes = static_cast<int64_t>(device_.num_blocks()) * BlockBytes();
  return usage;
}

KvCounters PagedKvManager::Counters() const {
  KvCounters counters = counters_;
  counters.evicted_cached_blocks = device_.counters().evicted_cached_blocks;
  return counters;
}

std::unique_ptr<KvCache> PagedKvManager::CreateRankCache(int rank) {
  ManagedKvCache::Options options;
  options.shape = context_.geometry.RankShape();
  options.block_size = options_.block_size;
  options.num_device_blocks = device_.num_blocks();
  options.num_host_blocks = host_ ? host_->num_blocks() : 0;
  options.allocate_storage = context_.host_kv_storage;
  return std::make_unique<ManagedKvCache>(this, &planned_, options);
}

std::vector<int32_t> PagedKvManager::BlockIds(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? std::vector<int32_t>{} : it->second.table.blocks;
}

bool PagedKvManager::IsSwappedOut(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it != seqs_.end() && it->second.swapped;
}

}  // namespace kvscope::kvcache
