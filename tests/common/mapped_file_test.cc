#include "common/mapped_file.h"

#include <filesystem>
#include <fstream>

#include "common/clock.h"
#include "gtest/gtest.h"

namespace kvscope {
namespace {

TEST(MappedFileTest, MapsContentsAndReportsErrorsByPath) {
  const auto dir = std::filesystem::temp_directory_path() / "kvscope_mapped_file_test";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "data.bin").string();
  std::ofstream(path, std::ios::binary) << "hello";
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->data()), 5), "hello");
  MappedFile moved = std::move(*file);
  EXPECT_EQ(moved.size(), 5u);

  auto missing = MappedFile::Open((dir / "missing.bin").string());
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_NE(missing.status().message().find("missing.bin"), std::string::npos);
  EXPECT_TRUE(absl::IsInvalidArgument(MappedFile::Open(dir.string()).status()));

  const std::string empty = (dir / "empty.bin").string();
  std::ofstream(empty, std::ios::binary).flush();
  auto e = MappedFile::Open(empty);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->size(), 0u);
}

TEST(ClockTest, FakeClockMovesOnlyWhenTold) {
  FakeClock clock(100);
  EXPECT_EQ(clock.NowNanos(), 100);
  clock.AdvanceSeconds(1.5);
  EXPECT_EQ(clock.NowNanos(), 1'500'000'100);
  clock.SetNanos(7);
  EXPECT_EQ(clock.NowNanos(), 7);
  const int64_t a = RealClock::Get().NowNanos();
  EXPECT_LE(a, RealClock::Get().NowNanos());
}

}  // namespace
}  // namespace kvscope
