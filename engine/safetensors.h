// File: engine/safetensors.h
//
// Reading (and, for tests and tools, writing) the safetensors format:
//   [8 bytes: little-endian u64 N][N bytes: JSON header][data section]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]}, offsets
// relative to the data section; an optional "__metadata__" object is ignored.
//
// The parser is strict: every structural problem (header length past the end of the file or
// above kMaxSafetensorsHeaderBytes, a header that is not a JSON object, a malformed entry, an
// unknown dtype, offsets out of range or disagreeing with shape x dtype size, overlapping
// tensors, duplicate names) is InvalidArgument naming the file and the tensor. Dtypes that
// the format defines but kvscope cannot convert (I32, F64, ...) parse fine; SupportedDType()
// reports them when a tensor is actually used.
//
// Thread-safety: a SafetensorsFile is immutable after Open() and safe to share.
#ifndef KVSCOPE_ENGINE_SAFETENSORS_H_
#define KVSCOPE_ENGINE_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/mapped_file.h"

namespace kvscope::engine {

// Headers larger than this are rejected as corrupt (real ones are well under 1 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull * 1000 * 1000;

// One tensor entry of a safetensors header.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;        // the safetensors spelling, e.g. "BF16", "I32"
  size_t element_size = 0;  // bytes per element of `dtype`
  std::vector<int64_t> shape;
  int64_t num_elements = 0;  // product of `shape` (1 for a scalar)
  uint64_t begin = 0;        // byte offsets relative to the data section; end - begin ==
  uint64_t end = 0;          //   num_elements * element_size
};

// A parsed header.
struct SafetensorsHeader {
  uint64_t data_start = 0;                           // absolute file offset of the data section
  std::vector<SafetensorsTensor> tensors;            // sorted by name
  std::map<std::string, size_t, std::less<>> index;  // name -> position in `tensors`
};

// Parses and validates the header of a safetensors file held in [data, data + size).
// `source` (the path) prefixes error messages. Never reads outside the buffer.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* data, size_t size,
                                                         std::string_view source);

// The element type of `tensor` if kvscope can convert it (F32, BF16, F16); otherwise
// InvalidArgument "SOURCE: tensor NAME has dtype I32; kvscope reads F32, BF16 and F16".
absl::StatusOr<DType> SupportedDType(const SafetensorsTensor& tensor, std::string_view source);

// Formats a shape as "[a, b]".
std::string ShapeString(const std::vector<int64_t>& shape);

// A memory-mapped safetensors file and its parsed header.
class SafetensorsFile {
 public:
  // NotFound if `path` is missing; InvalidArgument (naming the path) if it is corrupt.
  static absl::StatusOr<std::shared_ptr<const SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return mapped_->path(); }
  const std::vector<SafetensorsTensor>& tensors() const { return header_.tensors; }
  // nullptr when the file has no tensor `name`.
  const SafetensorsTensor* Find(std::string_view name) const;
  // First byte of `tensor`'s data inside the mapping (valid while the mapping lives).
  const uint8_t* TensorData(const SafetensorsTensor& tensor) const {
    return mapped_->data() + header_.data_start + tensor.begin;
  }
  // The mapping; hold a copy of the pointer to keep tensor data alive.
  const std::shared_ptr<MappedFile>& mapped_file() const { return mapped_; }

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> mapped, SafetensorsHeader header)
      : mapped_(std::move(mapped)), header_(std::move(header)) {}

  std::shared_ptr<MappedFile> mapped_;
  SafetensorsHeader header_;
};

// A tensor to write: raw little-endian bytes of `dtype` (any safetensors spelling).
struct SafetensorsWriteTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Serializes tensors (in the given order, packed back to back) into safetensors bytes; the
// header is padded with spaces to a multiple of 8 bytes, as the reference writer does.
std::string EncodeSafetensors(const std::vector<SafetensorsWriteTensor>& tensors);

// EncodeSafetensors and writes the result to `path`; Internal (naming the path) on I/O errors.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsWriteTensor>& tensors);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_SAFETENSORS_H_
