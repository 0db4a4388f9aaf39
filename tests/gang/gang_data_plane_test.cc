// The device-free parts of GPU gangs: the choice between NCCL and host-staged collectives
// (engine/gang_data_plane.h), its two messages and the exchange over a control channel,
// and the plan mirroring that GangDriver and RunGangFollower share for both engines (every
// follower applies exactly the plans the driver applies, through GangEngine::ApplyPlan).
#include "engine/gang_data_plane.h"

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/gang_driver.h"
#include "engine/gang_follower.h"
#include "engine/gang_messages.h"
#include "engine/presets.h"
#include "engine/recording_kv_manager.h"
#include "engine/serving.h"
#include "engine/weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvcache/registry.h"
#include "tests/gang/gang_test_util.h"

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;

using ::kvscope::testing::Pipe;

TEST(GangDataPlaneTest, NcclOnlyWhenEveryRankHasAGpuOfItsOwn) {
  EXPECT_EQ(ChooseGangDataPlane({"GPU-a", "GPU-b"}), GangDataPlane::kNccl);
  EXPECT_EQ(ChooseGangDataPlane({"GPU-a", "GPU-b", "GPU-c", "GPU-d"}), GangDataPlane::kNccl);
  // tp=2 nodes=2 as two processes on the one GPU of the machine.
  EXPECT_EQ(ChooseGangDataPlane({"GPU-a", "GPU-a"}), GangDataPlane::kHostStaged);
  EXPECT_EQ(ChooseGangDataPlane({"GPU-a", "GPU-b", "GPU-c", "GPU-a"}),
            GangDataPlane::kHostStaged);
  EXPECT_EQ(ChooseGangDataPlane({"GPU-a", ""}), GangDataPlane::kHostStaged);
  EXPECT_EQ(ChooseGangDataPlane({}), GangDataPlane::kHostStaged);
  // A single rank with a GPU may use NCCL (the engine then never reduces).
  EXPECT_EQ(ChooseGangDataPlane({"GPU-a"}), GangDataPlane::kNccl);
  EXPECT_EQ(GangDataPlaneName(GangDataPlane::kNccl), "nccl");
  EXPECT_EQ(GangDataPlaneName(GangDataPlane::kHostStaged), "host-staged");
}

TEST(GangDataPlaneTest, MessagesRoundTripAndRefuseMalformedFrames) {
  const std::vector<std::string> gpus = {"GPU-00ff", "", "GPU-1234"};
  const std::string frame = EncodeGpuDevices(gpus);
  EXPECT_EQ(*PeekType(frame), GangMessageType::kGpuDevices);
  absl::StatusOr<std::vector<std::string>> decoded = DecodeGpuDevices(frame);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, gpus);
  // An NCCL unique id is 128 opaque bytes, zeros included.
  std::string id(128, '\0');
  for (size_t i = 0; i < id.size(); i += 3) id[i] = static_cast<char>(i * 7);
  const std::string plane = EncodeDataPlane({"nccl", id});
  EXPECT_EQ(*PeekType(plane), GangMessageType::kDataPlane);
  absl::StatusOr<GangDataPlaneMessage> got = DecodeDataPlane(plane);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->kind, "nccl");
  EXPECT_EQ(got->nccl_unique_id, id);
  // Truncated, extended, wrong type, a count larger than the frame.
  EXPECT_THAT(DecodeDataPlane(plane.substr(0, plane.size() - 1)).status().message(),
              HasSubstr("malformed data plane"));
  EXPECT_FALSE(DecodeDataPlane(plane + "x").ok());
  EXPECT_FALSE(DecodeDataPlane(frame).ok());
  std::string huge = EncodeGpuDevices({});
  huge[1] = '\xff';
  huge[2] = '\xff';
  EXPECT_THAT(DecodeGpuDevices(huge).status().message(), HasSubstr("malformed gpu devices"));
}

struct Negotiation {
  absl::StatusOr<GangDataPlaneChoice> driver = absl::UnknownError("not run");
  std::vector<absl::StatusOr<GangDataPlaneChoice>> followers;
  int ids_made = 0;
};

// A driver with ranks `own` and one follower per entry of `followers`, on threads.
Negotiation Negotiate(const std::vector<std::string>& own,
                      const std::vector<std::vector<std::string>>& followers) {
  Negotiation n;
  std::vector<std::unique_ptr<Pipe>> pipes;
  std::vector<std::unique_ptr<GangChannel>> driver_ends;
  std::vector<std::unique_ptr<GangChannel>> follower_ends;
  for (size_t i = 0; i < followers.size(); ++i) {
    pipes.push_back(std::make_unique<Pipe>());
    driver_ends.push_back(std::make_unique<Pipe::End>(pipes.back().get(), 0));
    follower_ends.push_back(std::make_unique<Pipe::End>(pipes.back().get(), 1));
    n.followers.emplace_back(absl::UnknownError("not run"));
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < followers.size(); ++i) {
    threads.emplace_back([&, i] {
      n.followers[i] = JoinGangDataPlane(*follower_ends[i], followers[i], 10);
    });
  }
  n.driver = NegotiateGangDataPlane(
      driver_ends, own, static_cast<int>(own.size()),
      [&]() -> absl::StatusOr<std::string> {
        ++n.ids_made;
        return std::string(128, 'k');
      },
      10);
  // A failed driver ends its channels, as its process would by exiting.
  if (!n.driver.ok()) driver_ends.clear();
  for (std::thread& t : threads) t.join();
  return n;
}

TEST(GangDataPlaneTest, DriverAndFollowersAgreeOnHostStagedForASharedGpu) {
  Negotiation n = Negotiate({"GPU-a"}, {{"GPU-a"}});
  ASSERT_TRUE(n.driver.ok()) << n.driver.status();
  EXPECT_EQ(n.driver->plane, GangDataPlane::kHostStaged);
  EXPECT_EQ(n.ids_made, 0) << "no NCCL id is made for host-staged collectives";
  ASSERT_TRUE(n.followers[0].ok()) << n.followers[0].status();
  EXPECT_EQ(n.followers[0]->plane, GangDataPlane::kHostStaged);
  EXPECT_TRUE(n.followers[0]->nccl_unique_id.empty());
  // Distinct within each process, shared across them.
  n = Negotiate({"GPU-a", "GPU-b"}, {{"GPU-c", "GPU-d"}, {"GPU-b", "GPU-e"}});
  ASSERT_TRUE(n.driver.ok()) << n.driver.status();
  EXPECT_EQ(n.driver->plane, GangDataPlane::kHostStaged);
  for (const auto& f : n.followers) {
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->plane, GangDataPlane::kHostStaged);
  }
}

TEST(GangDataPlaneTest, EveryProcessGetsTheDriversNcclIdWhenEachRankHasItsGpu) {
  Negotiation n = Negotiate({"GPU-a", "GPU-b"}, {{"GPU-c", "GPU-d"}, {"GPU-e", "GPU-f"}});
  ASSERT_TRUE(n.driver.ok()) << n.driver.status();
  EXPECT_EQ(n.driver->plane, GangDataPlane::kNccl);
  EXPECT_EQ(n.ids_made, 1);
  EXPECT_EQ(n.driver->nccl_unique_id, std::string(128, 'k'));
  for (const auto& f : n.followers) {
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->plane, GangDataPlane::kNccl);
    EXPECT_EQ(f->nccl_unique_id, n.driver->nccl_unique_id);
  }
}

TEST(GangDataPlaneTest, AFollowerWithTheWrongRankCountFailsBothSides) {
  Negotiation n = Negotiate({"GPU-a", "GPU-b"}, {{"GPU-c"}});
  EXPECT_TRUE(absl::IsInvalidArgument(n.driver.status())) << n.driver.status();
  EXPECT_THAT(n.driver.status().message(),
              HasSubstr("gang follower process 1 reported 1 GPU ranks, expected 2"));
  EXPECT_FALSE(n.followers[0].ok());
  EXPECT_THAT(n.followers[0].status().message(), HasSubstr("data plane"));
}

TEST(GangDataPlaneTest, ASilentOrGoneFollowerFailsTheDriverNamingIt) {
  Pipe pipe;
  std::vector<std::unique_ptr<GangChannel>> ends;
  ends.push_back(std::make_unique<Pipe::End>(&pipe, 0));
  auto never = [] { return absl::StatusOr<std::string>(std::string(128, 'k')); };
  absl::StatusOr<GangDataPlaneChoice> silent =
      NegotiateGangDataPlane(ends, {"GPU-a"}, 1, never, 0.05);
  EXPECT_TRUE(absl::IsDeadlineExceeded(silent.status())) << silent.status();
  EXPECT_THAT(silent.status().message(), HasSubstr("gang follower process 1"));
  pipe.Close();
  absl::StatusOr<GangDataPlaneChoice> gone =
      NegotiateGangDataPlane(ends, {"GPU-a"}, 1, never, 0.05);
  EXPECT_TRUE(absl::IsUnavailable(gone.status())) << gone.status();
  // A follower whose driver sends something else than the decision.
  Pipe other;
  Pipe::End driver_end(&other, 0);
  Pipe::End follower_end(&other, 1);
  ASSERT_TRUE(driver_end.Send(EncodeDataPlane({"carrier-pigeon", ""})).ok());
  absl::StatusOr<GangDataPlaneChoice> odd = JoinGangDataPlane(follower_end, {"GPU-a"}, 1);
  EXPECT_THAT(odd.status().message(), HasSubstr("unknown data plane 'carrier-pigeon'"));
  ASSERT_TRUE(driver_end.Send(EncodeDataPlane({"nccl", ""})).ok());
  odd = JoinGangDataPlane(follower_end, {"GPU-a"}, 1);
  EXPECT_THAT(odd.status().message(), HasSubstr("sent no NCCL unique id"));
}

// ---------------------------------------------------------------------------------------
// Plan mirroring: the GPU engine's device pools follow each plan's block transfers, so
// every process must apply the very plans the driver applies. A CPU engine wrapped to
// record them stands in for the GPU engine.

struct RecordedPlan {
  std::vector<int32_t> new_slots;
  std::vector<std::pair<int32_t, int32_t>> swap_out, swap_in, copies;
  bool operator==(const RecordedPlan&) const = default;
};

class RecordingEngine final : public GangEngine {
 public:
  explicit RecordingEngine(std::unique_ptr<Engine> inner) : inner_(std::move(inner)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  int first_rank() const override { return inner_->first_rank(); }
  int local_ranks() const override { return inner_->local_ranks(); }
  absl::Status ApplyPlan(const kvcache::StepPlan& plan) override {
    RecordedPlan r;
    r.new_slots = plan.new_slots;
    auto pairs = [](const std::vector<kvcache::BlockCopy>& v) {
      std::vector<std::pair<int32_t, int32_t>> out;
      for (const kvcache::BlockCopy& c : v) out.emplace_back(c.src, c.dst);
      return out;
    };
    r.swap_out = pairs(plan.swap_out);
    r.swap_in = pairs(plan.swap_in);
    r.copies = pairs(plan.copies);
    plans.push_back(std::move(r));
    return inner_->ApplyPlan(plan);
  }
  absl::StatusOr<ForwardOutput> Forward(absl::Span<const SeqInput> batch) override {
    return inner_->Forward(batch);
  }
  void Release(int64_t seq_id) override { inner_->Release(seq_id); }
  void AbortCollectives() override { inner_->AbortCollectives(); }

  std::vector<RecordedPlan> plans;

 private:
  std::unique_ptr<Engine> inner_;
};

TEST(GangPlanMirrorTest, FollowersApplyExactlyTheDriversPlans) {
  auto config = PresetConfig("llama-tiny");
  ASSERT_TRUE(config.ok());
  auto w = SyntheticWeights(*config, 5);
  ASSERT_TRUE(w.ok()) << w.status();
  auto weights = std::make_shared<ModelWeights>(std::move(*w));
  // Tight: sequences are preempted and swapped out and in; a shared prefix forks blocks.
  const std::map<std::string, std::string> params = {
      {"block_size", "4"}, {"preemption_mode", "swap"}, {"swap_space", "1MiB"}};
  auto manager = [&]() {
    kvcache::KvManagerContext context{KvGeometryFor(weights->config, 2), 96 << 10, 256};
    auto kv = kvcache::CreateKvManager("paged", params, context);
    EXPECT_TRUE(kv.ok()) << kv.status();
    return std::move(*kv);
  };
  LocalCommGroup group(2);
  RecordingKvManager driver_kv(manager());
  auto replica = manager();
  auto engine = [&](kvcache::KvManager* kv, int first) {
    EngineOptions o;
    o.tp_size = 2;
    o.num_threads = 1;
    o.first_rank = first;
    o.local_ranks = 1;
    o.kv_factory = [kv](const kvcache::KvShape&, int rank) { return kv->CreateRankCache(rank); };
    o.comm_factory = [&group](int rank) -> absl::StatusOr<std::unique_ptr<Communicator>> {
      return group.ForRank(rank);
    };
    auto e = Engine::Create(weights, o);
    EXPECT_TRUE(e.ok()) << e.status();
    return std::make_unique<RecordingEngine>(std::move(*e));
  };
  auto driver_engine = engine(&driver_kv, 0);
  auto follower_engine = engine(replica.get(), 1);
  std::vector<RequestSpec> requests;
  for (int i = 0; i < 6; ++i) {
    RequestSpec r;
    r.id = i;
    for (int t = 0; t < 9 + 7 * i; ++t) {
      r.prompt.push_back(static_cast<int32_t>((3 + i * 131 + t * 17) % config->vocab_size));
    }
    r.output_len = 6 + i % 3;
    requests.push_back(r);
  }
  Pipe pipe;
  auto follower_end = std::make_unique<Pipe::End>(&pipe, 1);
  std::vector<std::unique_ptr<GangChannel>> followers;
  followers.push_back(std::make_unique<Pipe::End>(&pipe, 0));
  absl::Status follower_status;
  std::thread follower([&] {
    follower_status = RunGangFollower(*follower_end, *replica, *follower_engine, nullptr);
  });
  GangDriver driver(driver_engine.get(), &driver_kv, std::move(followers), GangDriverOptions{});
  ServingOptions serving;
  serving.scheduler.max_model_len = 256;
  serving.scheduler.max_num_batched_tokens = 32;
  int64_t steps = 0;
  const ServingResult got = RunServing(
      [&](absl::Span<const SeqInput> b, const kvcache::StepPlan& plan) {
        ++steps;
        return driver.Forward(b, &plan);
      },
      driver_kv, requests, serving);
  EXPECT_TRUE(driver.Finish().ok());
  follower.join();
  ASSERT_TRUE(got.complete) << got.status_message;
  EXPECT_TRUE(follower_status.ok()) << follower_status;
  EXPECT_EQ(static_cast<int64_t>(driver_engine->plans.size()), steps);
  ASSERT_EQ(follower_engine->plans.size(), driver_engine->plans.size());
  size_t swaps = 0;
  for (size_t s = 0; s < driver_engine->plans.size(); ++s) {
    EXPECT_TRUE(follower_engine->plans[s] == driver_engine->plans[s]) << "step " << s;
    swaps += driver_engine->plans[s].swap_out.size() + driver_engine->plans[s].swap_in.size();
  }
  EXPECT_GT(swaps, 0u) << "the tight case should swap blocks";
}

}  // namespace
}  // namespace kvscope::engine
