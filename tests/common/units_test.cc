#include "common/units.h"

#include "gtest/gtest.h"

namespace kvscope {
namespace {

TEST(UnitsTest, ParsesSuffixes) {
  EXPECT_EQ(*ParseBytes("4096"), 4096);
  EXPECT_EQ(*ParseBytes("512KiB"), 512 * 1024);
  EXPECT_EQ(*ParseBytes("64MiB"), 64LL << 20);
  EXPECT_EQ(*ParseBytes("1.5GiB"), 3LL << 29);
  EXPECT_EQ(*ParseBytes(" 2 GiB "), 2LL << 30);
  EXPECT_EQ(*ParseBytes("100MB"), 100000000);
  EXPECT_EQ(*ParseBytes("7B"), 7);
  EXPECT_EQ(*ParseBytes("0"), 0);
}

TEST(UnitsTest, RejectsGarbageWithAHint) {
  for (const char* bad : {"", "MiB", "-1MiB", "12XB", "abc", "1e30GiB", "nan"}) {
    auto r = ParseBytes(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("64MiB"), std::string::npos);
  }
}

TEST(UnitsTest, Formats) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(64LL << 20), "64.0 MiB");
  EXPECT_EQ(FormatBytes(3LL << 29), "1.50 GiB");
}

}  // namespace
}  // namespace kvscope
