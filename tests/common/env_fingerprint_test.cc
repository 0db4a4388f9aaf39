#include "common/env_fingerprint.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "common/build_info.h"
#include "gtest/gtest.h"

namespace kvscope {
namespace {

// Reference values from libxxhash 0.8.1 (XXH64 via ctypes), covering every tail path:
// < 4 bytes, < 32 bytes, stripes plus 8/4/1-byte tails.
std::string Bytes771() {
  std::string s;
  for (int r = 0; r < 3; ++r) {
    for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  }
  return s + "xyz";
}

TEST(Xxh64Test, MatchesReferenceImplementation) {
  EXPECT_EQ(Xxh64("", 0), 0xef46db3751d8e999ULL);
  EXPECT_EQ(Xxh64("a", 1), 0xd24ec4f1a98c6e5bULL);
  EXPECT_EQ(Xxh64("abc", 3), 0x44bc2cf5ad770999ULL);
  const std::string s49 = "0123456789abcdef0123456789abcdef0123456789abcdef!";
  EXPECT_EQ(Xxh64(s49.data(), s49.size()), 0xbc7c85eebf06937fULL);
  const std::string s771 = Bytes771();
  ASSERT_EQ(s771.size(), 771u);
  EXPECT_EQ(Xxh64(s771.data(), s771.size()), 0xe921a1b45bd779f8ULL);
  EXPECT_EQ(Xxh64("", 0, 42), 0x98b1582b0977e704ULL);
  EXPECT_EQ(Xxh64(s771.data(), s771.size(), 42), 0x7649e45d58c1a228ULL);
}

TEST(FileHashTest, HashesContentsAndNamesThePathOnError) {
  const auto dir = std::filesystem::temp_directory_path() / "kvscope_env_fingerprint_test";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "weights.bin").string();
  {
    const std::string s771 = Bytes771();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(s771.data(), static_cast<std::streamsize>(s771.size()));
  }
  auto hash = FileHash(path);
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_EQ(*hash, "e921a1b45bd779f8");

  const std::string empty = (dir / "empty.bin").string();
  std::ofstream(empty, std::ios::binary | std::ios::trunc).flush();
  auto empty_hash = FileHash(empty);
  ASSERT_TRUE(empty_hash.ok()) << empty_hash.status();
  EXPECT_EQ(*empty_hash, "ef46db3751d8e999");

  auto missing = FileHash((dir / "missing.bin").string());
  EXPECT_TRUE(absl::IsNotFound(missing.status())) << missing.status();
  EXPECT_NE(missing.status().message().find("missing.bin"), std::string::npos);
  EXPECT_FALSE(FileHash(dir.string()).ok());
  std::filesystem::remove_all(dir);
}

TEST(EnvFingerprintTest, FormatsUtcTimes) {
  EXPECT_EQ(FormatUtcIso8601(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(FormatUtcIso8601(1714564800), "2024-05-01T12:00:00Z");
  EXPECT_EQ(FormatUtcIso8601(951782400), "2000-02-29T00:00:00Z");
  EXPECT_GT(UnixSecondsNow(), 1700000000);
}

TEST(EnvFingerprintTest, ParsesProcFiles) {
  EXPECT_EQ(ParseCpuModel("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                          "model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t: fpu\n"
                          "processor\t: 1\nmodel name\t: other\n"),
            "Intel(R) Xeon(R) CPU @ 2.20GHz");
  EXPECT_EQ(ParseCpuModel("processor : 0\nBogoMIPS : 50.00\n"), "");
  EXPECT_EQ(ParseCpuModel(""), "");
  EXPECT_EQ(ParseMemTotalBytes("MemTotal:       16314480 kB\nMemFree:  1 kB\n"),
            int64_t{16314480} * 1024);
  EXPECT_EQ(ParseMemTotalBytes("MemFree:  1 kB\n"), 0);
  EXPECT_EQ(ParseMemTotalBytes("MemTotal: lots\n"), 0);
}

TEST(EnvFingerprintTest, HasEveryFieldWithItsType) {
  const nlohmann::json env = EnvironmentFingerprint(1714564800);
  ASSERT_TRUE(env.is_object());
  const BuildInfo& build = GetBuildInfo();
  EXPECT_EQ(env.at("kvscope_version"), build.version);
  EXPECT_EQ(env.at("git_commit"), build.git_commit);
  EXPECT_EQ(env.at("build_type"), build.build_type);
  EXPECT_EQ(env.at("with_cuda"), build.with_cuda);
  EXPECT_EQ(env.at("with_nccl"), build.with_nccl);
  EXPECT_EQ(env.at("sanitizers"), build.sanitizers);
  EXPECT_EQ(env.at("time_utc"), "2024-05-01T12:00:00Z");
  EXPECT_TRUE(env.at("hostname").is_string());
  ASSERT_TRUE(env.at("os").is_object());
  EXPECT_EQ(env.at("os").at("sysname"), "Linux");
  EXPECT_FALSE(env.at("os").at("release").get<std::string>().empty());
  EXPECT_FALSE(env.at("os").at("machine").get<std::string>().empty());
  EXPECT_TRUE(env.at("cpu_model").is_string());
  EXPECT_TRUE(env.at("cpu_cores").is_number_unsigned());
  EXPECT_GE(env.at("cpu_cores").get<int64_t>(), 1);
  EXPECT_GT(env.at("memory_bytes").get<int64_t>(), 0);
  EXPECT_FALSE(env.at("compiler").get<std::string>().empty());
  ASSERT_TRUE(env.at("gpus").is_array());
  if (!build.with_cuda) {
    EXPECT_TRUE(env.at("gpus").empty());
  }
}

}  // namespace
}  // namespace kvscope
