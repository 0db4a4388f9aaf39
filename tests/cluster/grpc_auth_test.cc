// Unit tests of the coordinator's gRPC plumbing without a network: bearer-token checks,
// loopback detection, server option validation, token files and the absl <-> gRPC status
// mapping.
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "coordinator/grpc_auth.h"
#include "coordinator/grpc_convert.h"
#include "coordinator/grpc_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvscope::coordinator {
namespace {

using ::testing::HasSubstr;

constexpr char kWorkerToken[] = "worker-token-0123456789";
constexpr char kClientToken[] = "client-token-0123456789";

TokenAuthenticator Auth() { return TokenAuthenticator({kWorkerToken}, {kClientToken}); }

TEST(TokenAuthenticatorTest, AcceptsTheRightKindOfToken) {
  const TokenAuthenticator auth = Auth();
  EXPECT_TRUE(auth.Check(TokenKind::kWorker, std::string("Bearer ") + kWorkerToken).ok());
  EXPECT_TRUE(auth.Check(TokenKind::kClient, std::string("Bearer ") + kClientToken).ok());
  EXPECT_TRUE(auth.Check(TokenKind::kClient, std::string("bearer ") + kClientToken).ok());
}

TEST(TokenAuthenticatorTest, MissingTokenIsUnauthenticatedAndSaysHowToFix) {
  const absl::Status s = Auth().Check(TokenKind::kClient, std::nullopt);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("--token"));
  EXPECT_EQ(Auth().Check(TokenKind::kWorker, std::string()).code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(TokenAuthenticatorTest, WrongTokenIsUnauthenticated) {
  const absl::Status s = Auth().Check(TokenKind::kWorker, std::string("Bearer nope"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(s.message(), HasSubstr("invalid worker token"));
  EXPECT_EQ(Auth().Check(TokenKind::kWorker, std::string(kWorkerToken)).code(),
            absl::StatusCode::kUnauthenticated);  // no "Bearer "
}

TEST(TokenAuthenticatorTest, TokenOfTheOtherKindIsPermissionDenied) {
  absl::Status s = Auth().Check(TokenKind::kClient, std::string("Bearer ") + kWorkerToken);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("a worker token cannot be used for the client API"));
  s = Auth().Check(TokenKind::kWorker, std::string("Bearer ") + kClientToken);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
}

TEST(TokenAuthenticatorTest, KindWithoutTokensIsOpen) {
  const TokenAuthenticator auth({kWorkerToken}, {});
  EXPECT_TRUE(auth.open(TokenKind::kClient));
  EXPECT_FALSE(auth.open(TokenKind::kWorker));
  EXPECT_TRUE(auth.Check(TokenKind::kClient, std::nullopt).ok());
  EXPECT_FALSE(auth.Check(TokenKind::kWorker, std::nullopt).ok());
}

TEST(LoopbackTest, RecognisesLoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:7070"));
  EXPECT_TRUE(IsLoopbackAddress("127.1.2.3:0"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:7070"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:7070"));
  EXPECT_TRUE(IsLoopbackAddress("unix:/tmp/kvscope.sock"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:7070"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:7070"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.5:7070"));
  EXPECT_FALSE(IsLoopbackAddress("128.0.0.1:7070"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.1.evil.com:7070"));
  EXPECT_FALSE(IsLoopbackAddress("gpu-node-1:7070"));
}

TEST(ServerOptionsTest, NonLoopbackWithoutTokensIsRefusedWithTheFix) {
  GrpcServerOptions options;
  options.listen_address = "0.0.0.0:7070";
  const absl::Status s = ValidateServerOptions(options);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("--listen 127.0.0.1:PORT"));
  EXPECT_THAT(s.message(), HasSubstr("--worker-token-file"));
  options.worker_tokens = {kWorkerToken};
  EXPECT_FALSE(ValidateServerOptions(options).ok());  // the client API would be open
  options.client_tokens = {kClientToken};
  EXPECT_TRUE(ValidateServerOptions(options).ok());
}

TEST(ServerOptionsTest, LoopbackWithoutTokensIsAllowed) {
  GrpcServerOptions options;
  options.listen_address = "127.0.0.1:0";
  EXPECT_TRUE(ValidateServerOptions(options).ok());
}

TEST(ServerOptionsTest, TlsFilesComeInPairsAndTokensAreLong) {
  GrpcServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.tls_cert_file = "server.pem";
  EXPECT_EQ(ValidateServerOptions(options).code(), absl::StatusCode::kInvalidArgument);
  options.tls_cert_file = "";
  options.tls_client_ca_file = "ca.pem";
  EXPECT_EQ(ValidateServerOptions(options).code(), absl::StatusCode::kInvalidArgument);
  options.tls_client_ca_file = "";
  options.client_tokens = {"short"};
  EXPECT_THAT(ValidateServerOptions(options).message(), HasSubstr("at least 16"));
}

TEST(TokenFileTest, SkipsBlankLinesAndComments) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("kvscope_tokens_" + std::to_string(getpid())))
          .string();
  std::ofstream(path) << "# workers\n\n  " << kWorkerToken << "  \nsecond-token-0123456789\n";
  absl::StatusOr<std::vector<std::string>> tokens = ReadTokenFile(path);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_THAT(*tokens, ::testing::ElementsAre(kWorkerToken, "second-token-0123456789"));
  std::ofstream(path) << "# nothing\n";
  EXPECT_THAT(ReadTokenFile(path).status().message(), HasSubstr("holds no token"));
  std::filesystem::remove(path);
  EXPECT_EQ(ReadTokenFile(path).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StatusMappingTest, EveryCodeKeepsItsNumberTowardsGrpc) {
  for (int code = 1; code <= 16; ++code) {
    const absl::Status s(static_cast<absl::StatusCode>(code), "m");
    const grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(g.error_message(), "m");
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(StatusMappingTest, UnreachableBecomesUnavailableOthersKeepTheirCode) {
  const std::string peer = "coordinator at 127.0.0.1:1";
  absl::Status s = FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"), peer);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr(peer));
  s = FromGrpcStatus(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "slow"), peer);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  s = FromGrpcStatus(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "stale attempt"), peer);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("stale attempt"));
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, ""), peer).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, ""), peer).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, ""), peer).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK, peer).ok());
}

TEST(ConvertTest, TrialInfoRoundTripsThroughProto) {
  TrialInfo t;
  t.trial_id = "e1.t3";
  t.index = 3;
  t.repeat = 1;
  t.axes = {{"strategy", "h2o(kv_budget=0.2)"}, {"request_rate", 8}};
  t.state = TrialState::kFailed;
  t.attempts.push_back({7, 1, "w1", "failed", "signal 9", 1.0, 2.0});
  t.error = "attempt 1: signal 9";
  t.waiting = "waiting for 4 workers that can each take a rank (a CPU trial slot); 2 can now";
  v1::TrialInfo proto;
  ToProto(t, &proto);
  absl::StatusOr<TrialInfo> back = FromProto(proto);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->trial_id, t.trial_id);
  EXPECT_EQ(back->axes, t.axes);
  EXPECT_EQ(back->state, TrialState::kFailed);
  ASSERT_EQ(back->attempts.size(), 1u);
  EXPECT_EQ(back->attempts[0].attempt_id, 7);
  EXPECT_EQ(back->error, t.error);
  EXPECT_EQ(back->waiting, t.waiting);
}

TEST(ConvertTest, BadJsonIsInvalidArgumentNotACrash) {
  v1::WorkerCapabilities proto;
  proto.set_fingerprint_json("{not json");
  EXPECT_EQ(FromProto(proto).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvscope::coordinator
