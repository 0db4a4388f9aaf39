// The wire of a gang: message encoding (engine/gang_messages.h), KV call replay
// (engine/recording_kv_manager.h) and the TCP rendezvous (engine/gang_session.h).
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "engine/gang_messages.h"
#include "engine/gang_session.h"
#include "engine/recording_kv_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;

TEST(GangMessagesTest, StepRoundTripsAndTruncationsAreRefused) {
  std::vector<KvOp> ops(3);
  ops[0].kind = KvOp::Kind::kAdmit;
  ops[0].a = 7;
  ops[0].tokens = {1, -2, 3};
  ops[0].max_new_tokens = 9;
  ops[0].result = 2;
  ops[1].kind = KvOp::Kind::kSwapIn;
  ops[1].a = 8;
  ops[1].ok = false;
  ops[2].kind = KvOp::Kind::kPlan;
  ops[2].steps = {{7, 1, 3}, {8, 2, 0}};
  const std::vector<int32_t> t0 = {5, 6}, t1 = {9};
  const std::vector<SeqInput> batch = {{7, t0, 3, true}, {1LL << 40, t1, 0, false}};
  const std::string frame = EncodeStep(ops, batch);
  std::vector<KvOp> got_ops;
  OwnedBatch got;
  ASSERT_TRUE(DecodeStep(frame, &got_ops, &got).ok());
  EXPECT_EQ(got_ops, ops);
  ASSERT_EQ(got.seqs.size(), 2u);
  const std::vector<SeqInput> inputs = got.Inputs();
  EXPECT_EQ(inputs[0].seq_id, 7);
  EXPECT_EQ(std::vector<int32_t>(inputs[0].tokens.begin(), inputs[0].tokens.end()), t0);
  EXPECT_EQ(inputs[0].start_position, 3);
  EXPECT_TRUE(inputs[0].all_logits);
  EXPECT_EQ(inputs[1].seq_id, 1LL << 40);
  EXPECT_FALSE(inputs[1].all_logits);
  EXPECT_EQ(*PeekType(frame), GangMessageType::kStep);
  for (size_t n = 0; n < frame.size(); ++n) {
    EXPECT_FALSE(DecodeStep(frame.substr(0, n), &got_ops, &got).ok()) << n;
  }
  EXPECT_FALSE(DecodeStep(frame + "x", &got_ops, &got).ok());
  EXPECT_FALSE(DecodeStep(EncodeDone(), &got_ops, &got).ok());
  EXPECT_FALSE(PeekType("").ok());
  EXPECT_FALSE(PeekType(std::string(1, '\x63')).ok());
}

TEST(GangMessagesTest, SmallMessagesRoundTrip) {
  const absl::StatusOr<GangHello> hello = DecodeHello(EncodeHello({"abc", 2, 5, "fp"}));
  ASSERT_TRUE(hello.ok());
  EXPECT_EQ(hello->token, "abc");
  EXPECT_EQ(hello->process, 2);
  EXPECT_EQ(hello->rank, 5);
  EXPECT_EQ(hello->fingerprint, "fp");
  EXPECT_EQ(*DecodeWelcome(EncodeWelcome("no")), "no");
  EXPECT_EQ(*DecodeRelease(EncodeRelease(-4)), -4);
  const absl::StatusOr<GangStepAck> ack =
      DecodeStepAck(EncodeStepAck(absl::InternalError("boom")));
  ASSERT_TRUE(ack.ok());
  EXPECT_EQ(ack->ToStatus(), absl::InternalError("boom"));
  EXPECT_TRUE(DecodeStepAck(EncodeStepAck(absl::OkStatus()))->ToStatus().ok());
}

TEST(GangRendezvousTest, FormatsParsesAndRefusesBadBlobs) {
  const GangRendezvous r{"10.0.0.7", 4242, std::string(32, 'a')};
  const std::string blob = FormatRendezvous(r);
  EXPECT_EQ(blob, "tcp://10.0.0.7:4242/" + std::string(32, 'a'));
  EXPECT_LE(blob.size(), 256u);
  absl::StatusOr<GangRendezvous> back = ParseRendezvous(blob + "\n");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->host, "10.0.0.7");
  EXPECT_EQ(back->port, 4242);
  back = ParseRendezvous(FormatRendezvous({"::1", 80, std::string(32, 'f')}));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->host, "::1");
  for (const std::string& bad :
       {std::string("http://h:1/") + std::string(32, 'a'), std::string("tcp://h/x"),
        std::string("tcp://h:0/") + std::string(32, 'a'), std::string("tcp://h:1/short"),
        std::string("tcp://:1/") + std::string(32, 'a')}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ParseRendezvous(bad).status())) << bad;
  }
}

std::string TempFile(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "kvscope_gang_session_test";
  std::filesystem::create_directories(dir);
  std::filesystem::remove(dir / name);
  return (dir / name).string();
}

TEST(GangSessionTest, DriverAndFollowerJoinOverLoopbackAndTalk) {
  const std::string file = TempFile("ok.rdv");
  const GangLayout driver_layout{0, 2, 4};
  auto session = GangDriverSession::Listen(driver_layout, "127.0.0.1", file);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(testing::ReadFileOrDie(file), (*session)->blob());
  EXPECT_FALSE(std::filesystem::exists(file + ".tmp"));
  absl::StatusOr<GangMembership> follower;
  std::thread t([&] {
    follower = JoinGang({1, 2, 4}, testing::ReadFileOrDie(file), "fp", DeadlineIn(10),
                        TcpCommOptions{10});
  });
  absl::StatusOr<GangMembership> driver =
      (*session)->Gather("fp", DeadlineIn(10), TcpCommOptions{10});
  t.join();
  ASSERT_TRUE(driver.ok()) << driver.status();
  ASSERT_TRUE(follower.ok()) << follower.status();
  ASSERT_EQ(driver->comms.size(), 2u);
  ASSERT_EQ(follower->comms.size(), 2u);
  ASSERT_EQ(driver->followers.size(), 1u);
  EXPECT_EQ(follower->comms[0]->rank(), 2);
  // The four ranks all-reduce together; the control channel carries frames both ways.
  std::vector<std::vector<float>> data = {{1, 2}, {10, 20}, {100, 200}, {1000, 2000}};
  std::vector<Communicator*> comms = {driver->comms[0].get(), driver->comms[1].get(),
                                      follower->comms[0].get(), follower->comms[1].get()};
  std::vector<std::thread> threads;
  std::vector<absl::Status> status(4);
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] { status[r] = comms[r]->AllReduceSum(data[r].data(), 2); });
  }
  for (auto& th : threads) th.join();
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(status[r].ok()) << status[r];
    EXPECT_EQ(data[r], (std::vector<float>{1111, 2222}));
  }
  ASSERT_TRUE(driver->followers[0]->Send(EncodeDone()).ok());
  EXPECT_EQ(*follower->driver->Receive(5), EncodeDone());
  ASSERT_TRUE(follower->driver->Send(EncodeRelease(1)).ok());
  EXPECT_EQ(*driver->followers[0]->Receive(5), EncodeRelease(1));
}

TEST(GangSessionTest, AWrongTokenIsDroppedAndTheDriverTimesOutSayingWhoJoined) {
  const std::string file = TempFile("token.rdv");
  auto session = GangDriverSession::Listen({0, 2, 2}, "127.0.0.1", file);
  ASSERT_TRUE(session.ok()) << session.status();
  absl::StatusOr<GangRendezvous> r = ParseRendezvous((*session)->blob());
  ASSERT_TRUE(r.ok());
  r->token = std::string(32, '0');
  absl::StatusOr<GangMembership> follower;
  std::thread t([&] {
    follower = JoinGang({1, 2, 2}, FormatRendezvous(*r), "fp", DeadlineIn(5), TcpCommOptions{5});
  });
  const absl::StatusOr<GangMembership> driver =
      (*session)->Gather("fp", DeadlineIn(1), TcpCommOptions{5});
  t.join();
  EXPECT_TRUE(absl::IsDeadlineExceeded(driver.status())) << driver.status();
  EXPECT_THAT(driver.status().message(), HasSubstr("0 of 1 follower processes"));
  EXPECT_THAT(driver.status().message(), HasSubstr("1 of 2 ranks"));
  EXPECT_FALSE(follower.ok());
  EXPECT_THAT(follower.status().message(), HasSubstr("token"));
}

TEST(GangSessionTest, AFollowerWithAnotherConfigurationIsRefused) {
  const std::string file = TempFile("config.rdv");
  auto session = GangDriverSession::Listen({0, 2, 2}, "127.0.0.1", file);
  ASSERT_TRUE(session.ok()) << session.status();
  absl::StatusOr<GangMembership> follower;
  std::thread t([&] {
    follower = JoinGang({1, 2, 2}, (*session)->blob(), "tp=4", DeadlineIn(5), TcpCommOptions{5});
  });
  const absl::StatusOr<GangMembership> driver =
      (*session)->Gather("tp=2", DeadlineIn(1), TcpCommOptions{5});
  t.join();
  EXPECT_FALSE(driver.ok());
  EXPECT_THAT(driver.status().message(), HasSubstr("another configuration"));
  ASSERT_FALSE(follower.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(follower.status())) << follower.status();
  EXPECT_THAT(follower.status().message(), HasSubstr("refused"));
}

TEST(GangSessionTest, AFollowerWithoutADriverGivesUpAtTheDeadline) {
  const auto start = std::chrono::steady_clock::now();
  // A port nobody listens on (the listener is closed before the follower tries).
  int port = 0;
  {
    auto l = ListenTcp("127.0.0.1", 1);
    ASSERT_TRUE(l.ok());
    port = l->port;
  }
  const absl::StatusOr<GangMembership> follower =
      JoinGang({1, 2, 2}, FormatRendezvous({"127.0.0.1", port, std::string(32, 'a')}), "fp",
               DeadlineIn(0.5), TcpCommOptions{5});
  EXPECT_FALSE(follower.ok());
  EXPECT_THAT(follower.status().message(), HasSubstr("cannot reach the driver"));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5);
}

}  // namespace
}  // namespace kvscope::engine
