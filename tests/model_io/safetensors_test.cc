// Tests for engine/safetensors (header parsing and validation, writer round trip),
// engine/checkpoint (single file and shards) and the common/dtype converters.
#include "engine/safetensors.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "engine/checkpoint.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model_io/model_io_test_helpers.h"
#include "tests/test_util.h"

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

std::string Bytes(size_t n, char fill = 0) { return std::string(n, fill); }

// Raw safetensors bytes from a header JSON text and a data section.
std::string Raw(const std::string& header, const std::string& data) {
  std::string out;
  const uint64_t len = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + header + data;
}

absl::StatusOr<SafetensorsHeader> ParseBytes(const std::string& bytes) {
  return ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                "/ckpt/model.safetensors");
}

void ExpectError(const std::string& bytes, const std::vector<std::string>& substrings) {
  absl::StatusOr<SafetensorsHeader> r = ParseBytes(bytes);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  const std::string message(r.status().message());
  EXPECT_THAT(message, ::testing::StartsWith("/ckpt/model.safetensors: "));
  EXPECT_THAT(message, Not(HasSubstr("\n")));
  for (const std::string& s : substrings) EXPECT_THAT(message, HasSubstr(s));
}

TEST(SafetensorsTest, ParsesValidHeader) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},)"
      R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"s":{"dtype":"F16","shape":[],"data_offsets":[28,30]},)"
      R"("z":{"dtype":"I64","shape":[0,5],"data_offsets":[30,30]}})";
  absl::StatusOr<SafetensorsHeader> r = ParseBytes(Raw(header, Bytes(30)));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->tensors.size(), 4u);
  EXPECT_EQ(r->data_start, 8 + header.size());
  EXPECT_EQ(r->tensors[0].name, "a");
  EXPECT_EQ(r->tensors[1].name, "b");
  EXPECT_EQ(r->tensors[1].dtype, "BF16");
  EXPECT_EQ(r->tensors[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(r->tensors[1].num_elements, 6);
  EXPECT_EQ(r->tensors[1].begin, 16u);
  EXPECT_EQ(r->tensors[1].end, 28u);
  EXPECT_EQ(r->tensors[2].num_elements, 1);  // scalar
  EXPECT_EQ(r->tensors[3].num_elements, 0);
  EXPECT_EQ(r->index.at("s"), 2u);
}

TEST(SafetensorsTest, EncodeRoundTripAndAlignment) {
  std::vector<SafetensorsWriteTensor> tensors = {{"x", "F32", {2, 2}, Bytes(16, 1)},
                                                 {"y", "BF16", {3}, Bytes(6, 2)}};
  const std::string bytes = EncodeSafetensors(tensors);
  absl::StatusOr<SafetensorsHeader> r = ParseBytes(bytes);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->data_start % 8, 0u);
  ASSERT_EQ(r->tensors.size(), 2u);
  EXPECT_EQ(bytes.substr(r->data_start + r->tensors[1].begin, 6), Bytes(6, 2));
}

TEST(SafetensorsTest, RealFixtureHeaders) {
  for (const char* rel : {"fixtures/hf-reference/llama-gqa/fp32/model.safetensors",
                          "fixtures/hf-reference/opt/bf16/model.safetensors"}) {
    KVSCOPE_REQUIRE_SHARED(path, rel);
    absl::StatusOr<std::shared_ptr<const SafetensorsFile>> f = SafetensorsFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_GT((*f)->tensors().size(), 10u);
    EXPECT_EQ((*f)->Find("__metadata__"), nullptr);
    EXPECT_EQ((*f)->Find("no.such.tensor"), nullptr);
    for (const SafetensorsTensor& t : (*f)->tensors()) {
      EXPECT_EQ((*f)->Find(t.name), &t);
      EXPECT_LE((*f)->TensorData(t) + (t.end - t.begin),
                (*f)->mapped_file()->data() + (*f)->mapped_file()->size());
    }
  }
}

TEST(SafetensorsErrorTest, TooShortAndHeaderLength) {
  ExpectError("", {"too short"});
  ExpectError(Bytes(7), {"too short"});
  // Header length larger than the file.
  std::string bytes = Raw("{}", "");
  bytes[0] = 100;
  ExpectError(bytes, {"header length 100", "past the end of the file"});
  // Absurd header length (> 100 MB).
  std::string huge(8, '\xff');
  ExpectError(huge + "{}", {"larger than the limit"});
}

TEST(SafetensorsErrorTest, HeaderNotJsonOrNotObject) {
  ExpectError(Raw("{\"a\":", Bytes(4)), {"not valid JSON"});
  ExpectError(Raw("[1,2]", ""), {"must be a JSON object"});
  ExpectError(Raw("\xff\xfe", ""), {"not valid JSON"});
}

TEST(SafetensorsErrorTest, BadEntries) {
  ExpectError(Raw(R"({"w":5})", ""), {"tensor w", "expected an object"});
  ExpectError(Raw(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", Bytes(4)), {"tensor w", "dtype"});
  ExpectError(Raw(R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", Bytes(4)),
              {"tensor w", "unknown dtype 'Q7'"});
  ExpectError(Raw(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", Bytes(4)),
              {"tensor w", "shape"});
  ExpectError(Raw(R"({"w":{"dtype":"F32","shape":"4","data_offsets":[0,4]}})", Bytes(4)),
              {"tensor w", "shape"});
  ExpectError(Raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", Bytes(4)),
              {"tensor w", "data_offsets"});
  ExpectError(
      Raw(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})",
          Bytes(4)),
      {"tensor w", "too large"});
}

TEST(SafetensorsErrorTest, OffsetsOutOfRange) {
  ExpectError(Raw(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", Bytes(12)),
              {"tensor w", "[0, 16]", "past the end of the data section (12 bytes)"});
  ExpectError(Raw(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", Bytes(16)),
              {"tensor w", "end before"});
  ExpectError(Raw(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", Bytes(16)),
              {"tensor w", "needs 12"});
  ExpectError(Raw(R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", Bytes(16)),
              {"tensor w", "needs 8"});
}

TEST(SafetensorsErrorTest, TruncatedFile) {
  const std::string good = EncodeSafetensors({{"w", "F32", {8}, Bytes(32)}});
  ASSERT_TRUE(ParseBytes(good).ok());
  ExpectError(good.substr(0, good.size() - 1), {"tensor w", "past the end of the data section"});
  ExpectError(good.substr(0, 20), {"past the end of the file"});
}

TEST(SafetensorsErrorTest, OverlapAndDuplicates) {
  ExpectError(Raw(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                  Bytes(16)),
              {"overlaps", "tensor a", "tensor b"});
  ExpectError(Raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  Bytes(8)),
              {"tensor a", "twice"});
  // Nested duplicate keys (inside __metadata__) are not tensor names.
  EXPECT_TRUE(ParseBytes(Raw(R"({"__metadata__":{"k":"1","k":"2"},)"
                             R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                             Bytes(4)))
                  .ok());
}

TEST(SafetensorsTest, SupportedDType) {
  SafetensorsTensor t;
  t.name = "w";
  for (const auto& [name, dtype] : std::vector<std::pair<std::string, DType>>{
           {"F32", DType::kF32}, {"BF16", DType::kBF16}, {"F16", DType::kF16}}) {
    t.dtype = name;
    absl::StatusOr<DType> d = SupportedDType(t, "f");
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(*d, dtype);
  }
  t.dtype = "I32";
  absl::StatusOr<DType> d = SupportedDType(t, "/ckpt/model.safetensors");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("/ckpt/model.safetensors: tensor w has dtype I32"));
}

TEST(SafetensorsErrorTest, OpenMissingFile) {
  absl::StatusOr<std::shared_ptr<const SafetensorsFile>> f =
      SafetensorsFile::Open("/nonexistent/model.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr("/nonexistent/model.safetensors"));
}

// ---- Dtype converters --------------------------------------------------------------------

TEST(DTypeTest, KnownBitPatterns) {
  EXPECT_EQ(Bf16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(Bf16ToF32(0xc000), -2.0f);
  EXPECT_EQ(Bf16ToF32(0x4049), 3.140625f);
  EXPECT_EQ(Bf16ToF32(0x0000), 0.0f);
  EXPECT_TRUE(std::signbit(Bf16ToF32(0x8000)));
  EXPECT_EQ(Bf16ToF32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Bf16ToF32(0x7fc0)));
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x3555), 0.333251953125f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16(3.14159265f), 0x4049);
  EXPECT_EQ(F32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);
}

TEST(DTypeTest, ConvertToF32Unaligned) {
  const uint16_t bf[3] = {0x3f80, 0xc000, 0x4049};
  std::string buf(1, 'x');
  buf.append(reinterpret_cast<const char*>(bf), sizeof(bf));
  float out[3];
  ConvertToF32(DType::kBF16, buf.data() + 1, 3, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 3.140625f);
  const uint16_t h[2] = {0x3c00, 0x7bff};
  ConvertToF32(DType::kF16, h, 2, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 65504.0f);
  // Every bf16 pattern round-trips through float.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = Bf16ToF32(static_cast<uint16_t>(bits));
    if (!std::isnan(f)) {
      ASSERT_EQ(F32ToBf16(f), bits);
    }
  }
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = F16ToF32(static_cast<uint16_t>(bits));
    if (!std::isnan(f)) {
      ASSERT_EQ(F32ToF16(f), bits);
    }
  }
}

// ---- Checkpoint --------------------------------------------------------------------------

TEST(CheckpointTest, MissingDirectoryAndWeights) {
  absl::StatusOr<Checkpoint> c = Checkpoint::Open("/nonexistent/dir");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("model directory /nonexistent/dir does not exist"));
  testing::TempDir dir;
  c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr(dir.path() + "/model.safetensors"));
}

TEST(CheckpointTest, ShardsAndIndexErrors) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteSafetensors(dir.Sub("a.safetensors"), {{"x", "F32", {2}, Bytes(8)}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir.Sub("b.safetensors"), {{"y", "F16", {2}, Bytes(4)}}).ok());
  const std::string index = dir.Sub("model.safetensors.index.json");
  testing::WriteFileOrDie(
      index, json{{"weight_map", {{"x", "a.safetensors"}, {"y", "b.safetensors"}}}}.dump());
  absl::StatusOr<Checkpoint> c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->files().size(), 2u);
  EXPECT_EQ(c->source(), index);
  EXPECT_EQ(c->TensorNames(), (std::vector<std::string>{"x", "y"}));
  ASSERT_NE(c->Find("y"), nullptr);
  EXPECT_EQ(c->Find("y")->tensor->dtype, "F16");
  EXPECT_EQ(c->Find("z"), nullptr);

  // A tensor listed in the index but absent from its shard.
  testing::WriteFileOrDie(
      index, json{{"weight_map", {{"x", "a.safetensors"}, {"y", "a.safetensors"}}}}.dump());
  c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("tensor y"));
  EXPECT_THAT(c.status().message(), HasSubstr("a.safetensors"));
  // A missing shard.
  testing::WriteFileOrDie(index, json{{"weight_map", {{"x", "c.safetensors"}}}}.dump());
  c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr(dir.Sub("c.safetensors")));
  // Shard names escaping the directory, a malformed index, a missing weight_map.
  testing::WriteFileOrDie(index, json{{"weight_map", {{"x", "../a.safetensors"}}}}.dump());
  EXPECT_EQ(Checkpoint::Open(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
  testing::WriteFileOrDie(index, "{");
  c = Checkpoint::Open(dir.path());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(index));
  testing::WriteFileOrDie(index, "{}");
  c = Checkpoint::Open(dir.path());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("weight_map"));
  // A corrupt shard is reported with its own path.
  testing::WriteFileOrDie(index, json{{"weight_map", {{"x", "a.safetensors"}}}}.dump());
  testing::WriteFileOrDie(dir.Sub("a.safetensors"), "garbage!garbage!");
  c = Checkpoint::Open(dir.path());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(dir.Sub("a.safetensors")));
}

}  // namespace
}  // namespace kvscope::engine
