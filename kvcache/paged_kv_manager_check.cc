// PagedKvManager::CheckInvariants: an independent recount of the manager's state from its
// sequences (kept apart from the hot paths in paged_kv_manager.cc).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvcache/paged_kv_manager.h"

namespace kvscope::kvcache {
namespace {

absl::Status Broken(const std::string& what) {
  return absl::InternalError(absl::StrCat("paged manager: ", what));
}

absl::Status CheckPins(const BlockPool& pool, const std::vector<uint8_t>& pinned,
                       const std::vector<int32_t>& list, const char* which) {
  int64_t count = 0;
  for (uint8_t p : pinned) count += p;
  if (count != static_cast<int64_t>(list.size())) {
    return Broken(absl::StrCat(which, " pin list has ", list.size(), " blocks, flags ", count));
  }
  for (int32_t b : list) {
    if (!pinned[b] || pool.RefCount(b) < 1) {
      return Broken(absl::StrCat(which, " block ", b, " is listed as pinned but is not"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PagedKvManager::CheckInvariants() const {
  KVSCOPE_RETURN_IF_ERROR(device_.CheckInvariants());
  KVSCOPE_RETURN_IF_ERROR(CheckPins(device_, device_pins_.pinned, device_pins_.list, "device"));
  if (host_) {
    KVSCOPE_RETURN_IF_ERROR(host_->CheckInvariants());
    KVSCOPE_RETURN_IF_ERROR(CheckPins(*host_, host_pins_.pinned, host_pins_.list, "host"));
  }
  const int32_t bs = options_.block_size;
  const bool caching = device_.prefix_caching();
  std::vector<int32_t> holders(device_.num_blocks(), 0);
  std::vector<int32_t> fill(device_.num_blocks(), -1);
  std::vector<int32_t> host_holders(host_ ? host_->num_blocks() : 0, 0);
  int64_t host_held = 0, swapped_tokens = 0;
  for (const auto& [id, s] : seqs_) {
    const BlockTable& t = s.table;
    const int32_t n = t.num_tokens();
    const std::string who = absl::StrCat("sequence ", id, ": ");
    if (static_cast<int64_t>(t.blocks.size()) != (n + bs - 1) / bs ||
        t.positions.size() != t.slots.size()) {
      return Broken(absl::StrCat(who, n, " tokens in ", t.blocks.size(), " blocks"));
    }
    if (caching && (static_cast<int32_t>(s.tokens.size()) != n ||
                    static_cast<int32_t>(s.hashes.size()) != n / bs)) {
      return Broken(absl::StrCat(who, s.tokens.size(), " token ids and ", s.hashes.size(),
                                 " block hashes for ", n, " tokens"));
    }
    for (int32_t i = 0; i < n; ++i) {
      if (t.positions[i] != i) return Broken(absl::StrCat(who, "position ", i, " is wrong"));
    }
    if (s.swapped) {
      for (int32_t b : t.blocks) ++host_holders[b];
      host_held += static_cast<int64_t>(t.blocks.size());
      swapped_tokens += n;
      continue;
    }
    for (int32_t i = 0; i < n; ++i) {
      if (t.slots[i] != t.blocks[i / bs] * bs + i % bs) {
        return Broken(absl::StrCat(who, "slot of token ", i, " does not match its block"));
      }
    }
    for (size_t j = 0; j < t.blocks.size(); ++j) {
      const int32_t b = t.blocks[j];
      ++holders[b];
      const int32_t in_block = std::min<int32_t>(bs, n - static_cast<int32_t>(j) * bs);
      if (fill[b] >= 0 && fill[b] != in_block) {
        return Broken(absl::StrCat("block ", b, " is shared with ", fill[b], " and ", in_block,
                                   " tokens written (a missed copy-on-write)"));
      }
      fill[b] = in_block;
    }
  }
  int64_t flagged = 0;
  for (uint8_t f : pending_dst_) flagged += f;
  if (flagged != static_cast<int64_t>(pending_dst_list_.size())) {
    return Broken(
        absl::StrCat(flagged, " pending targets flagged, ", pending_dst_list_.size(), " listed"));
  }
  for (int32_t b : pending_dst_list_) {
    if (!pending_dst_[b]) return Broken(absl::StrCat("pending target ", b, " is not flagged"));
  }
  int64_t held = 0, used = 0;
  for (int32_t b = 0; b < device_.num_blocks(); ++b) {
    if (device_.RefCount(b) != holders[b] + device_pins_.pinned[b]) {
      return Broken(absl::StrCat("device block ", b, " has ref ", device_.RefCount(b), " but ",
                                 holders[b], " holders and pin ", device_pins_.pinned[b]));
    }
    if (holders[b] == 0) continue;
    ++held;
    used += fill[b];
    if (fill_[b] != fill[b]) {
      return Broken(absl::StrCat("device block ", b, " fill ", fill_[b], ", recount ", fill[b]));
    }
  }
  for (size_t b = 0; b < host_holders.size(); ++b) {
    if (host_holders[b] > 1 || host_->RefCount(b) != host_holders[b] + host_pins_.pinned[b]) {
      return Broken(absl::StrCat("host block ", b, " has ref ", host_->RefCount(b), " and ",
                                 host_holders[b], " holders"));
    }
  }
  if (held != held_blocks_ || used != used_tokens_ || host_held != host_held_blocks_ ||
      swapped_tokens != swapped_tokens_) {
    return Broken(absl::StrCat("counters held/used/host/swapped ", held_blocks_, "/", used_tokens_,
                               "/", host_held_blocks_, "/", swapped_tokens_, " but recount ", held,
                               "/", used, "/", host_held, "/", swapped_tokens));
  }
  return absl::OkStatus();
}

}  // namespace kvscope::kvcache
