// File: engine/tokenizer_bpe.cc
#include "engine/tokenizer_bpe.h"

#include <queue>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

// Reads one merge, either "a b" or ["a", "b"].
absl::StatusOr<std::pair<std::string, std::string>> ParseMerge(const Json& m, const JsonPath& at) {
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    size_t space = s.find(' ');
    if (space == std::string::npos) {
      return at.Error(absl::StrCat("merge ", Quote(s), " is not \"left right\""));
    }
    return std::make_pair(s.substr(0, space), s.substr(space + 1));
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
    return std::make_pair(m[0].get<std::string>(), m[1].get<std::string>());
  }
  return at.Error("expected \"left right\" or [left, right]");
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Parse(const Json& j, const JsonPath& at) {
  absl::StatusOr<std::string> type = RequireType(j, at);
  if (!type.ok()) return type.status();
  if (*type != "BPE") {
    return at.Field("type").Error(
        absl::StrCat("unsupported model ", Quote(*type), " (supported: BPE)"));
  }
  std::unique_ptr<BpeModel> model(new BpeModel());

  const Json* vocab = FindField(j, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return at.Field("vocab").Error("expected an object of token: id");
  }
  model->vocab_.reserve(vocab->size());
  model->vocab_r_.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    JsonPath entry_at = at.Field("vocab").Field(Quote(it.key()));
    absl::StatusOr<int32_t> id = AsId(it.value(), entry_at);
    if (!id.ok()) return id.status();
    auto [pos, inserted] = model->vocab_r_.emplace(*id, it.key());
    if (!inserted) {
      return entry_at.Error(absl::StrCat("id ", *id, " also used by ", Quote(pos->second)));
    }
    model->vocab_.emplace(it.key(), *id);
    model->max_id_ = std::max(model->max_id_, *id);
  }

  absl::StatusOr<std::optional<std::string>> prefix =
      OptionalString(j, "continuing_subword_prefix", at);
  if (!prefix.ok()) return prefix.status();
  model->prefix_ = *std::move(prefix);
  absl::StatusOr<std::optional<std::string>> suffix = OptionalString(j, "end_of_word_suffix", at);
  if (!suffix.ok()) return suffix.status();
  model->suffix_ = *std::move(suffix);

  const Json* merges = FindField(j, "merges");
  if (merges != nullptr && !merges->is_null()) {
    if (!merges->is_array()) return at.Field("merges").Error("expected an array");
    model->merges_.reserve(merges->size());
    const size_t prefix_len = model->prefix_ ? model->prefix_->size() : 0;
    for (size_t i = 0; i < merges->size(); ++i) {
      JsonPath merge_at = at.Field("merges").Index(i);
      absl::StatusOr<std::pair<std::string, std::string>> merge =
          ParseMerge((*merges)[i], merge_at);
      if (!merge.ok()) return merge.status();
      const auto& [left, right] = *merge;
      auto a = model->vocab_.find(left);
      auto b = model->vocab_.find(right);
      if (a == model->vocab_.end() || b == model->vocab_.end()) {
        return merge_at.Error(absl::StrCat("token ", Quote(a == model->vocab_.end() ? left : right),
                                           " is not in model.vocab"));
      }
      // With a continuing_subword_prefix the right part loses it in the merged token.
      std::string merged = left;
      if (prefix_len > 0 && right.compare(0, prefix_len, *model->prefix_) == 0) {
        merged.append(right, prefix_len, std::string::npos);
      } else {
        merged += right;
      }
      auto c = model->vocab_.find(merged);
      if (c == model->vocab_.end()) {
        return merge_at.Error(
            absl::StrCat("merged token ", Quote(merged), " is not in model.vocab"));
      }
      // A repeated pair keeps its last rank, as tokenizers' HashMap collect does.
      model->merges_[PairKey(a->second, b->second)] = Merge{static_cast<int32_t>(i), c->second};
    }
  }

  absl::StatusOr<std::optional<std::string>> unk = OptionalString(j, "unk_token", at);
  if (!unk.ok()) return unk.status();
  if (unk->has_value()) {
    auto it = model->vocab_.find(**unk);
    if (it == model->vocab_.end()) {
      return at.Field("unk_token").Error(absl::StrCat(Quote(**unk), " is not in model.vocab"));
    }
    model->unk_id_ = it->second;
  }
  absl::StatusOr<bool> fuse_unk = GetBool(j, "fuse_unk", at, false);
  if (!fuse_unk.ok()) return fuse_unk.status();
  model->fuse_unk_ = *fuse_unk;
  absl::StatusOr<bool> byte_fallback = GetBool(j, "byte_fallback", at, false);
  if (!byte_fallback.ok()) return byte_fallback.status();
  model->byte_fallback_ = *byte_fallback;
  absl::StatusOr<bool> ignore_merges = GetBool(j, "ignore_merges", at, false);
  if (!ignore_merges.ok()) return ignore_merges.status();
  model->ignore_merges_ = *ignore_merges;
  const Json* dropout = FindField(j, "dropout");
  if (dropout != nullptr && !dropout->is_null()) {
    if (!dropout->is_number()) return at.Field("dropout").Error("expected a number or null");
    double p = dropout->get<double>();
    if (!(p >= 0.0 && p <= 1.0)) return at.Field("dropout").Error("outside [0, 1]");
    if (p > 0.0) {
      return at.Field("dropout").Error("BPE dropout is random; only null or 0 is supported");
    }
  }

  model->byte_ids_.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    auto it = model->vocab_.find(absl::StrFormat("<0x%02X>", b));
    if (it != model->vocab_.end()) model->byte_ids_[b] = it->second;
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(Sv(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  auto it = vocab_r_.find(id);
  return it == vocab_r_.end() ? nullptr : &it->second;
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto id = TokenToId(word)) {
      ids->push_back(*id);
      return;
    }
  }
  // Initial symbols, one per character (tokenizers' BPE::merge_word).
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  int32_t pending_unk = -1;  // an unk symbol not yet emitted (fuse_unk extends it), or -1
  std::string s;
  size_t i = 0;
  while (i < word.size()) {
    size_t len = 1;
    unsigned char lead = static_cast<unsigned char>(word[i]);
    if (lead >= 0xF0) {
      len = 4;
    } else if (lead >= 0xE0) {
      len = 3;
    } else if (lead >= 0xC0) {
      len = 2;
    }
    len = std::min(len, word.size() - i);
    bool is_first = i == 0;
    bool is_last = i + len == word.size();
    s.clear();
    if (!is_first && prefix_) s += *prefix_;
    s.append(word.substr(i, len));
    if (is_last && suffix_) s += *suffix_;
    i += len;

    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (pending_unk >= 0) {
        symbols.push_back(pending_unk);
        pending_unk = -1;
      }
      symbols.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : s) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // NOTE: like tokenizers, a pending unk is not flushed before byte tokens.
        for (char c : s) symbols.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) symbols.push_back(pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) symbols.push_back(pending_unk);
  MergeAll(&symbols);
  ids->insert(ids->end(), symbols.begin(), symbols.end());
}

void BpeModel::MergeAll(std::vector<int32_t>* symbols) const {
  const int32_t n = static_cast<int32_t>(symbols->size());
  if (n < 2 || merges_.empty()) return;
  // Doubly linked list over positions; a merged-away symbol gets id -1.
  std::vector<int32_t>& id = *symbols;
  std::vector<int32_t> prev(n), next(n);
  for (int32_t k = 0; k < n; ++k) {
    prev[k] = k - 1;
    next[k] = k + 1 < n ? k + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int32_t pos;  // left symbol
    int32_t new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push = [&](int32_t pos) {
    int32_t right = next[pos];
    if (right < 0) return;
    auto it = merges_.find(PairKey(id[pos], id[right]));
    if (it != merges_.end()) queue.push(Candidate{it->second.rank, pos, it->second.new_id});
  };
  for (int32_t k = 0; k + 1 < n; ++k) push(k);
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    if (id[top.pos] < 0) continue;
    int32_t right = next[top.pos];
    if (right < 0) continue;
    // Skip stale entries: the pair at this position must still produce this merge.
    auto it = merges_.find(PairKey(id[top.pos], id[right]));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    id[top.pos] = top.new_id;
    id[right] = -1;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    if (prev[top.pos] >= 0) push(prev[top.pos]);
    push(top.pos);
  }
  int32_t out = 0;
  for (int32_t k = 0; k < n; ++k) {
    if (id[k] >= 0) id[out++] = id[k];
  }
  id.resize(out);
}

}  // namespace kvscope::engine::tokenizer_internal
