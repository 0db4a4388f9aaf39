// File: common/build_info.h
//
// Facts fixed at build time, for --version and the environment fingerprint.
#ifndef KVSCOPE_COMMON_BUILD_INFO_H_
#define KVSCOPE_COMMON_BUILD_INFO_H_

#include <string>

namespace kvscope {

struct BuildInfo {
  std::string version;     // "0.1.0"
  std::string git_commit;  // short hash, or "unknown" outside a git checkout
  std::string build_type;  // CMAKE_BUILD_TYPE
  bool with_cuda = false;  // CUDA backend compiled in
  bool with_nccl = false;  // NCCL communicator compiled in
  bool sanitizers = false;
};

const BuildInfo& GetBuildInfo();

}  // namespace kvscope

#endif  // KVSCOPE_COMMON_BUILD_INFO_H_
