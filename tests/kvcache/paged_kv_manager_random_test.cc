// Long random runs of the paged manager driving a real rank cache: admissions with shared
// prefixes, prefill, decode, forks, recompute and swap preemption. Every step the "model"
// writes into each new token's slot K/V values derived from the token's whole prefix, and
// every sequence's view is read back: each token must find exactly its own values (so
// sharing, copy-on-write and swap are correct to the bit), and the usage numbers must match
// a recount from the views.
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/ops.h"
#include "kvcache/paged_kv_manager.h"
#include "tests/kvcache/kv_manager_test_util.h"

namespace kvscope::kvcache {
namespace {

using testing::kBytesPerToken;

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Exactly representable float values for (prefix, layer, head, dim), K and V distinct.
float KValue(uint64_t prefix, int l, int h, int d) {
  return static_cast<float>(Mix(prefix ^ (l * 1000 + h * 10 + d)) & 0xffffff);
}
float VValue(uint64_t prefix, int l, int h, int d) {
  return -static_cast<float>(Mix(~prefix ^ (l * 1000 + h * 10 + d)) & 0xffffff);
}

struct Shadow {
  std::vector<int32_t> tokens;   // every token known
  std::vector<uint64_t> prefix;  // prefix[p]: hash of tokens[0..p]
  int32_t appended = 0;          // tokens the manager holds (device or host)
  bool swapped = false;
  void Push(int32_t token) {
    prefix.push_back(Mix((prefix.empty() ? 1 : prefix.back()) * 31 + token));
    tokens.push_back(token);
  }
};

struct Config {
  int32_t block_size;
  bool prefix_caching;
  bool swap;
  uint32_t seed;
};

class PagedRandomTest : public ::testing::TestWithParam<Config> {};

TEST_P(PagedRandomTest, EveryTokenReadsBackItsOwnKvAndUsageMatchesARecount) {
  const Config config = GetParam();
  const int32_t bs = config.block_size;
  const int64_t num_blocks = 192 / bs;
  PagedKvManager::Options options;
  options.block_size = bs;
  options.watermark = 0.05;
  options.enable_prefix_caching = config.prefix_caching;
  options.swap = config.swap;
  options.swap_space_bytes = num_blocks / 2 * bs * kBytesPerToken;
  auto created = PagedKvManager::Create(testing::ContextForBlocks(num_blocks, bs), options);
  ASSERT_TRUE(created.ok()) << created.status();
  PagedKvManager& m = **created;
  std::unique_ptr<KvCache> cache = m.CreateRankCache(0);
  const KvShape shape = cache->shape();

  std::mt19937 rng(config.seed);
  auto uniform = [&](int n) { return static_cast<int>(rng() % n); };
  // Four prompt families with long common prefixes, so prefix hits are frequent.
  std::vector<std::vector<int32_t>> families(4);
  for (auto& f : families) {
    for (int i = 0; i < 32; ++i) f.push_back(uniform(50));
  }
  std::map<int64_t, Shadow> live;                   // admitted (device or swapped)
  std::vector<std::pair<int64_t, Shadow>> waiting;  // preempted by recompute
  int64_t next_id = 1;
  int64_t hits = 0, cows = 0, swaps = 0, preemptions = 0;

  auto check = [&](const char* after) {
    absl::Status s = m.CheckInvariants();
    ASSERT_TRUE(s.ok()) << after << ": " << s;
  };
  auto ids_where = [&](auto pred) {
    std::vector<int64_t> ids;
    for (auto& [id, s] : live) {
      if (pred(s)) ids.push_back(id);
    }
    return ids;
  };
  auto admit = [&](int64_t id, Shadow shadow) {
    shadow.appended = 0;
    const SeqRequest request{id, shadow.tokens, 8};
    if (m.CanAdmit(request).status != AdmitStatus::kOk) return false;
    absl::StatusOr<int32_t> cached = m.Admit(request);
    EXPECT_TRUE(cached.ok()) << cached.status();
    EXPECT_LT(*cached, static_cast<int32_t>(shadow.tokens.size()));
    hits += *cached;
    shadow.appended = *cached;
    live[id] = std::move(shadow);
    return true;
  };

  for (int step = 0; step < 1500; ++step) {
    // 1. Bookkeeping the scheduler might do before the step.
    for (int op = uniform(4); op > 0; --op) {
      switch (uniform(6)) {
        case 0: {  // admit a new or a preempted sequence
          if (!waiting.empty() && uniform(2) == 0) {
            if (admit(waiting.front().first, waiting.front().second)) {
              waiting.erase(waiting.begin());
            }
          } else if (live.size() < 12) {
            Shadow s;
            const auto& family = families[uniform(4)];
            const int shared = uniform(33);
            for (int i = 0; i < shared; ++i) s.Push(family[i]);
            for (int i = uniform(12) + (shared == 0); i > 0; --i) s.Push(50 + uniform(50));
            admit(next_id++, std::move(s));
          }
          break;
        }
        case 1: {  // fork a fully appended device sequence
          auto ids = ids_where([](const Shadow& s) {
            return !s.swapped && s.appended == static_cast<int32_t>(s.tokens.size());
          });
          if (ids.empty() || live.size() >= 12) break;
          const int64_t parent = ids[uniform(ids.size())];
          ASSERT_TRUE(m.Fork(parent, next_id).ok());
          live[next_id++] = live[parent];
          break;
        }
        case 2: {  // finish / abort
          if (live.empty()) break;
          auto it = std::next(live.begin(), uniform(live.size()));
          m.Free(it->first);
          live.erase(it);
          break;
        }
        case 3: {  // swap out
          auto ids = ids_where([](const Shadow& s) { return !s.swapped; });
          if (ids.empty()) break;
          const int64_t id = ids[uniform(ids.size())];
          if (m.SwapOut(id)) {
            live[id].swapped = true;
            ++swaps;
          }
          break;
        }
        case 4:
        case 5: {  // swap in
          auto ids = ids_where([](const Shadow& s) { return s.swapped; });
          if (ids.empty()) break;
          const int64_t id = ids[uniform(ids.size())];
          if (m.CanSwapIn(id)) {
            ASSERT_TRUE(m.SwapIn(id).ok());
            live[id].swapped = false;
          }
          break;
        }
      }
      check("bookkeeping");
    }
    // 2. Appends: the rest of a prompt, or one decoded token; preempt on failure.
    std::vector<SeqStep> steps;
    for (int64_t id : ids_where([](const Shadow& s) { return !s.swapped; })) {
      Shadow& s = live[id];
      const bool decode = s.appended == static_cast<int32_t>(s.tokens.size());
      if (decode) {
        if (s.tokens.size() >= 60) {  // finished
          m.Free(id);
          live.erase(id);
          continue;
        }
        s.Push(50 + uniform(4));  // a small vocabulary: forks often decode the same token
      }
      const int32_t start = s.appended;
      const auto fresh = absl::MakeConstSpan(s.tokens).subspan(start);
      if (m.Append(id, fresh)) {
        s.appended = static_cast<int32_t>(s.tokens.size());
        steps.push_back({id, static_cast<int32_t>(fresh.size()), start});
      } else {
        ++preemptions;
        if (decode) {  // the token was not decoded after all
          s.tokens.pop_back();
          s.prefix.pop_back();
        }
        if (uniform(2) == 0 && m.SwapOut(id)) {
          s.swapped = true;
          ++swaps;
        } else {
          m.Free(id);
          waiting.emplace_back(id, s);
          live.erase(id);
        }
      }
      check("append");
    }
    // Sequences that computed nothing still show their views (0 new tokens).
    for (int64_t id : ids_where([](const Shadow& s) { return !s.swapped; })) {
      if (std::none_of(steps.begin(), steps.end(),
                       [&](const SeqStep& x) { return x.seq_id == id; })) {
        steps.push_back({id, 0, live[id].appended});
      }
    }
    std::shuffle(steps.begin(), steps.end(), rng);

    // 3. Plan, prepare the rank, "run the model": write each new token's K/V.
    absl::StatusOr<const StepPlan*> plan = m.Plan(steps);
    ASSERT_TRUE(plan.ok()) << plan.status();
    cows += static_cast<int64_t>((*plan)->copies.size());
    ASSERT_TRUE(cache->PrepareStep(steps).ok());
    ASSERT_EQ(cache->NewTokenSlots().size(), (*plan)->new_slots.size());
    {
      const int row = shape.num_kv_heads * shape.head_dim;
      std::vector<float> k, v;
      std::vector<int32_t> slots;
      for (int32_t l = 0; l < shape.num_layers; ++l) {
        k.clear();
        v.clear();
        slots.clear();
        size_t next = 0;
        for (const SeqStep& st : steps) {
          const Shadow& s = live[st.seq_id];
          for (int32_t p = st.start_position; p < st.start_position + st.num_new_tokens; ++p) {
            for (int h = 0; h < shape.num_kv_heads; ++h) {
              for (int d = 0; d < shape.head_dim; ++d) {
                k.push_back(KValue(s.prefix[p], l, h, d));
                v.push_back(VValue(s.prefix[p], l, h, d));
              }
            }
            slots.push_back(cache->NewTokenSlots()[next++]);
          }
        }
        ASSERT_TRUE(kernels::WriteKv(cache->Pool(l), k.data(), v.data(), row, slots.data(),
                                     static_cast<int64_t>(slots.size()))
                        .ok());
      }
    }
    // 4. Read every view back and recount usage.
    const auto views = cache->SeqViews(0);
    ASSERT_EQ(views.size(), steps.size());
    std::map<int32_t, std::pair<uint64_t, int32_t>> owner;  // slot -> (prefix, position)
    std::set<int32_t> blocks;
    for (size_t i = 0; i < steps.size(); ++i) {
      const Shadow& s = live[steps[i].seq_id];
      const kernels::SeqKvView& view = views[i];
      ASSERT_EQ(view.num_cached, s.appended);
      ASSERT_EQ(view.head_stride, 0);
      std::set<int32_t> own;
      for (int32_t p = 0; p < view.num_cached; ++p) {
        ASSERT_EQ(view.positions[p], p);
        const int32_t slot = view.slots[p];
        ASSERT_TRUE(own.insert(slot).second) << "slot used twice within a sequence";
        auto [it, inserted] = owner.emplace(slot, std::make_pair(s.prefix[p], p));
        ASSERT_TRUE(inserted || it->second == std::make_pair(s.prefix[p], p))
            << "slot " << slot << " shared by tokens with different prefixes";
        blocks.insert(slot / bs);
        for (int32_t l = 0; l < shape.num_layers; ++l) {
          const kernels::KvPoolView pool = cache->Pool(l);
          for (int h = 0; h < shape.num_kv_heads; ++h) {
            const int64_t base =
                ((static_cast<int64_t>(slot / bs) * pool.num_kv_heads + h) * bs + slot % bs) *
                pool.head_dim;
            for (int d = 0; d < shape.head_dim; ++d) {
              ASSERT_EQ(pool.k[base + d], KValue(s.prefix[p], l, h, d))
                  << "step " << step << " seq " << steps[i].seq_id << " position " << p;
              ASSERT_EQ(pool.v[base + d], VValue(s.prefix[p], l, h, d));
            }
          }
        }
      }
    }
    const KvUsage usage = m.Usage();
    ASSERT_EQ(usage.used_bytes, static_cast<int64_t>(owner.size()) * kBytesPerToken);
    ASSERT_EQ(usage.reserved_bytes, static_cast<int64_t>(blocks.size()) * bs * kBytesPerToken);
    int64_t swapped_tokens = 0, swapped_blocks = 0;
    for (auto& [id, s] : live) {
      if (!s.swapped) continue;
      swapped_tokens += s.appended;
      swapped_blocks += (s.appended + bs - 1) / bs;
    }
    ASSERT_EQ(usage.swapped_bytes, swapped_tokens * kBytesPerToken);
    ASSERT_EQ(usage.host_bytes, swapped_blocks * bs * kBytesPerToken);
    check("plan");
  }
  // Free everything: nothing leaks.
  for (auto& [id, s] : live) m.Free(id);
  ASSERT_TRUE(m.Plan({}).ok());
  EXPECT_EQ(m.device_pool().num_free(), m.device_pool().num_blocks());
  EXPECT_EQ(m.Usage().reserved_bytes, 0);
  EXPECT_EQ(m.Usage().host_bytes, 0);
  if (m.host_pool()) {
    EXPECT_EQ(m.host_pool()->num_free(), m.host_pool()->num_blocks());
  }
  check("end");
  // The run exercised what it is meant to.
  EXPECT_GT(preemptions, 0);
  if (bs > 1) {
    EXPECT_GT(cows, 0);  // with one-token blocks no shared block is ever partial
  }
  if (config.prefix_caching) {
    EXPECT_GT(hits, 0);
  }
  if (config.swap) {
    EXPECT_GT(swaps, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, PagedRandomTest,
                         ::testing::Values(Config{4, true, true, 1}, Config{4, false, true, 2},
                                           Config{16, true, false, 3}, Config{1, true, true, 4},
                                           Config{8, true, true, 5}),
                         [](const ::testing::TestParamInfo<Config>& info) {
                           return "bs" + std::to_string(info.param.block_size) +
                                  (info.param.prefix_caching ? "_prefix" : "_noprefix") +
                                  (info.param.swap ? "_swap" : "_recompute");
                         });

}  // namespace
}  // namespace kvscope::kvcache
