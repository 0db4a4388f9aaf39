#include "kvcache/infinigen_kv_manager.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kvcache/infinigen_kv_cache.h"
#include "kvcache/plan_check.h"

namespace kvscope::kvcache {
namespace {

bool RatioOk(double r) { return std::isfinite(r) && r >= 0.0 && r <= 1.0; }

}  // namespace

absl::StatusOr<std::unique_ptr<InfinigenKvManager>> InfinigenKvManager::Create(
    const KvManagerContext& context, const InfinigenOptions& options) {
  const KvGeometry& g = context.geometry;
  if (g.num_layers < 1 || g.kv_heads_per_rank < 1 || g.head_dim < 1 || g.tp_size < 1 ||
      g.num_heads_per_rank < 1) {
    return absl::InvalidArgumentError("infinigen: bad KV geometry");
  }
  if (options.alpha && !(std::isfinite(*options.alpha) && *options.alpha >= 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("infinigen: alpha=", *options.alpha, " must be >= 0"));
  }
  if (!RatioOk(options.partial_ratio) || !RatioOk(options.max_kv_ratio) ||
      !RatioOk(options.host_capacity)) {
    return absl::InvalidArgumentError(absl::StrCat("infinigen: partial_ratio (",
                                                   options.partial_ratio, "), max_kv_ratio (",
                                                   options.max_kv_ratio, ") and host_capacity (",
                                                   options.host_capacity, ") must be in [0, 1]"));
  }
  const int32_t partial_dim = static_cast<int32_t>(g.head_dim * options.partial_ratio);
  if (partial_dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "infinigen: partial_ratio=", options.partial_ratio, " keeps no column of head_dim ",
        g.head_dim, "; it must be at least ", 1.0 / g.head_dim));
  }
  if (options.max_num_kv ? *options.max_num_kv < 1 : options.max_kv_ratio == 0.0) {
    return absl::InvalidArgumentError(
        "infinigen: a budget of zero tokens (max_num_kv=0 or max_kv_ratio=0 / kv_budget=0); "
        "give max_num_kv >= 1 or a positive ratio");
  }
  if (options.host_capacity == 0.0) {
    return absl::InvalidArgumentError(
        "infinigen: host_capacity=0 keeps no token in the host pool; use (0, 1]");
  }
  if (options.calibration_tokens < 2) {
    return absl::InvalidArgumentError("infinigen: calibration_tokens must be >= 2");
  }
  if (options.dense_layers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("infinigen: dense_layers=", options.dense_layers,
                     " must be >= 1 (layer 0 has no previous layer to speculate from)"));
  }
  if (options.mass_sample_interval < 0) {
    return absl::InvalidArgumentError("infinigen: mass_sample_interval must be >= 0");
  }
  auto manager =
      std::unique_ptr<InfinigenKvManager>(new InfinigenKvManager(context, options, partial_dim));
  if (manager->CapacityTokens() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("infinigen: KV memory of ", context.kv_memory_bytes, " bytes holds no token (",
                     manager->DeviceBytesPerToken(), " device bytes per token)"));
  }
  return manager;
}

InfinigenKvManager::InfinigenKvManager(const KvManagerContext& context,
                                       const InfinigenOptions& options, int32_t partial_dim)
    : context_(context), options_(options), partial_dim_(partial_dim) {}

int64_t InfinigenKvManager::DeviceBytesPerToken() const {
  const KvGeometry& g = context_.geometry;
  const int64_t head_bytes = static_cast<int64_t>(g.head_dim) * g.bytes_per_element;
  const int64_t full_layers = std::min(g.num_layers, options_.dense_layers);
  return full_layers * 2 * g.kv_heads_per_rank * head_bytes +
         static_cast<int64_t>(sparse_layers()) * g.kv_heads_per_rank * partial_dim_ *
             g.bytes_per_element;
}

int64_t InfinigenKvManager::PrefetchBytes(int64_t max_num_kv) const {
  if (sparse_layers() == 0) return 0;
  const KvGeometry& g = context_.geometry;
  return 2 * max_num_kv * 2LL * g.kv_heads_per_rank * g.head_dim * g.bytes_per_element;
}

int64_t InfinigenKvManager::CapacityTokens() const {
  return context_.kv_memory_bytes / DeviceBytesPerToken();
}

int64_t InfinigenKvManager::MaxNumKv(int64_t prompt_len, int64_t max_new_tokens) const {
  if (options_.max_num_kv) return *options_.max_num_kv;
  return static_cast<int64_t>(options_.max_kv_ratio *
                              static_cast<double>(prompt_len + max_new_tokens));
}

int64_t InfinigenKvManager::PeakTokens(const SeqRequest& seq) const {
  const int64_t total = static_cast<int64_t>(seq.tokens.size()) + seq.max_new_tokens;
  const int64_t per_token = DeviceBytesPerToken();
  const int64_t prefetch =
      PrefetchBytes(std::min<int64_t>(MaxNumKv(seq.tokens.size(), seq.max_new_tokens), total));
  return total + (prefetch + per_token - 1) / per_token;
}

Admission InfinigenKvManager::CanAdmit(const SeqRequest& seq) const {
  const int64_t max_kv = MaxNumKv(seq.tokens.size(), seq.max_new_tokens);
  if (max_kv < 1) {
    return {AdmitStatus::kNever,
            absl::StrCat("infinigen: a budget of zero tokens (max_num_kv ", max_kv, " for ",
                         seq.tokens.size(), " + ", seq.max_new_tokens,
                         " tokens); raise max_kv_ratio / kv_budget or give max_num_kv")};
  }
  const int64_t peak = PeakTokens(seq);
  if (peak > CapacityTokens()) {
    return {AdmitStatus::kNever,
            absl::StrCat("infinigen: needs ", peak, " device token units, the pool holds ",
                         CapacityTokens())};
  }
  if (peak > CapacityTokens() - reserved_units_) return {AdmitStatus::kLater, ""};
  return {AdmitStatus::kOk, ""};
}

absl::StatusOr<int32_t> InfinigenKvManager::Admit(const SeqRequest& seq) {
  if (seqs_.contains(seq.seq_id)) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq.seq_id, " already admitted"));
  }
  const Admission admission = CanAdmit(seq);
  if (admission.status != AdmitStatus::kOk) {
    return absl::ResourceExhaustedError(
        absl::StrCat("infinigen cannot admit sequence ", seq.seq_id, " now. ", admission.reason));
  }
  auto s = std::make_unique<Seq>();
  s->id = seq.seq_id;
  s->prompt_len = static_cast<int32_t>(seq.tokens.size());
  s->peak = s->prompt_len + seq.max_new_tokens;
  s->max_num_kv = static_cast<int32_t>(
      std::min<int64_t>(MaxNumKv(seq.tokens.size(), seq.max_new_tokens), s->peak));
  if (options_.host_capacity < 1.0) {
    s->host_limit = std::max(1, static_cast<int32_t>(options_.host_capacity * s->peak));
    const int64_t n = static_cast<int64_t>(sparse_layers()) * global_kv_heads();
    s->alive.assign(n * s->peak, 0);
    s->count.assign(n * s->peak, 0);
    s->alive_count.assign(n, 0);
  }
  s->reserved_units = PeakTokens(seq);
  s->slots.resize(s->peak);
  for (int32_t& slot : s->slots) {
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = static_cast<int32_t>(host_slots_++);
    }
  }
  reserved_units_ += s->reserved_units;
  seqs_[seq.seq_id] = std::move(s);
  return 0;
}

bool InfinigenKvManager::Append(int64_t seq_id, absl::Span<const int32_t> tokens) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return false;
  Seq& s = *it->second;
  if (s.length + static_cast<int64_t>(tokens.size()) > s.peak) return false;
  s.length += static_cast<int32_t>(tokens.size());
  return true;
}

void InfinigenKvManager::Free(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  for (int32_t slot : it->second->slots) free_slots_.push_back(slot);
  reserved_units_ -= it->second->reserved_units;
  seqs_.erase(it);
}

int32_t InfinigenKvManager::NumTokens(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? 0 : it->second->length;
}

absl::StatusOr<const StepPlan*> InfinigenKvManager::Plan(absl::Span<const SeqStep> steps) {
  KVSCOPE_RETURN_IF_ERROR(
      CheckPlanSteps(steps, seqs_, ++plan_stamp_, StepExtent::kPrefix));
  Planned& p = planned_;
  p.plan.steps.assign(steps.begin(), steps.end());
  p.plan.new_slots.clear();
  p.plan.views.clear();
  p.seqs.clear();
  p.staging_slots = 0;
  const int64_t lh = static_cast<int64_t>(sparse_layers()) * global_kv_heads();
  int32_t row = 0;
  for (const SeqStep& step : steps) {
    Seq& s = *seqs_.at(step.seq_id);
    PlannedSeq ps;
    ps.seq = &s;
    ps.token_row = row;
    row += step.num_new_tokens;
    ps.decode = step.num_new_tokens == 1 && step.start_position >= s.prompt_len;
    ps.sparse = ps.decode && sparse_layers() > 0;
    if (ps.sparse) {
      ++s.decode_steps;
      ps.sample_mass = options_.mass_sample_interval > 0 &&
                       (s.decode_steps - 1) % options_.mass_sample_interval == 0;
      ps.staging_offset = p.staging_slots;
      p.staging_slots += s.max_num_kv;
    }
    for (int32_t j = 0; j < step.num_new_tokens; ++j) {
      const int32_t pos = step.start_position + j;
      p.plan.new_slots.push_back(s.slots[pos]);
      if (s.host_limit > 0) {
        for (int64_t i = 0; i < lh; ++i) {
          s.alive[i * s.peak + pos] = 1;
          ++s.alive_count[i];
        }
      }
    }
    s.planned_length = step.start_position + step.num_new_tokens;
    p.seqs.push_back(ps);
  }
  p.host_slots = host_slots_;
  ++p.generation;
  return &p.plan;
}

KvUsage InfinigenKvManager::Usage() const {
  const KvGeometry& g = context_.geometry;
  const int64_t per_token = DeviceBytesPerToken();
  const int64_t head_token_bytes = 2LL * g.head_dim * g.bytes_per_element;
  const int64_t full_layers = std::min(g.num_layers, options_.dense_layers);
  KvUsage u;
  u.capacity_bytes = CapacityTokens() * per_token;
  for (const auto& [id, s] : seqs_) {
    u.reserved_bytes += s->reserved_units * per_token;
    u.used_bytes += s->length * per_token + PrefetchBytes(s->max_num_kv);
    int64_t host_heads = full_layers * g.kv_heads_per_rank * s->length;
    if (s->host_limit > 0) {
      int64_t live = 0;
      for (int32_t c : s->alive_count) live += c;
      host_heads += live / g.tp_size;  // per rank (alive_count covers every rank's heads)
    } else {
      host_heads += static_cast<int64_t>(sparse_layers()) * g.kv_heads_per_rank * s->length;
    }
    u.host_bytes += host_heads * head_token_bytes;
  }
  return u;
}

KvCounters InfinigenKvManager::Counters() const {
  KvCounters c;
  const int32_t layers = context_.geometry.num_layers;
  c.selected_tokens_per_layer.assign(layers, 0);
  c.selections_per_layer.assign(layers, 0);
  for (const auto& st : rank_stats_) {
    c.h2d_bytes += st->h2d_bytes;
    c.mass_captured_sum += st->mass_captured_sum;
    c.mass_samples += st->mass_samples;
    for (int32_t l = 0; l < layers; ++l) {
      c.selected_tokens_per_layer[l] += st->selected_tokens_per_layer[l];
      c.selections_per_layer[l] += st->selections_per_layer[l];
    }
  }
  // Ranks select in lockstep as to how many sequences and layers; count selections once.
  const int64_t ranks = std::max<int64_t>(1, static_cast<int64_t>(rank_stats_.size()));
  for (int32_t l = 0; l < layers; ++l) {
    c.selected_tokens_per_layer[l] /= ranks;
    c.selections_per_layer[l] /= ranks;
    c.selected_tokens += c.selected_tokens_per_layer[l];
    c.selections += c.selections_per_layer[l];
  }
  return c;
}

absl::Status InfinigenKvManager::SetSkew(std::shared_ptr<const InfinigenSkew> skew) {
  const KvGeometry& g = context_.geometry;
  const int32_t model_kv_heads = skew == nullptr ? 0 : skew->num_kv_heads;
  if (skew == nullptr || skew->num_layers != g.num_layers || skew->head_dim != g.head_dim ||
      skew->partial_dim != partial_dim_ || model_kv_heads < 1 ||
      skew->a.size() !=
          static_cast<size_t>(g.num_layers) * model_kv_heads * g.head_dim * g.head_dim ||
      skew->columns.size() != static_cast<size_t>(g.num_layers) * model_kv_heads * partial_dim_) {
    return absl::InvalidArgumentError(
        "infinigen: skewing matrices do not match the model geometry / partial_dim");
  }
  skew_ = std::move(skew);
  return absl::OkStatus();
}

double InfinigenKvManager::alpha() const {
  if (options_.alpha) return *options_.alpha;
  return skew_ != nullptr ? skew_->default_alpha : 5.0;
}

std::unique_ptr<KvCache> InfinigenKvManager::CreateRankCache(int rank) {
  auto stats = std::make_unique<InfinigenRankStats>();
  stats->selected_tokens_per_layer.assign(context_.geometry.num_layers, 0);
  stats->selections_per_layer.assign(context_.geometry.num_layers, 0);
  InfinigenRankStats* raw = stats.get();
  rank_stats_.push_back(std::move(stats));
  return std::make_unique<InfinigenKvCache>(this, &planned_, rank, raw);
}

}  // namespace kvscope::kvcache
