// File: common/mapped_file.h
//
// A read-only memory map of a whole file. Move-only; unmaps on destruction. The mapped
// bytes stay valid for the object's lifetime. Thread-compatible (reads are safe).
#ifndef KVSCOPE_COMMON_MAPPED_FILE_H_
#define KVSCOPE_COMMON_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kvscope {

class MappedFile {
 public:
  // NotFound if the file is missing, InvalidArgument if it is a directory, Internal for
  // other OS errors; messages name the path.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace kvscope

#endif  // KVSCOPE_COMMON_MAPPED_FILE_H_
