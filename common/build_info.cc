#include "common/build_info.h"

namespace kvscope {

const BuildInfo& GetBuildInfo() {
  static const BuildInfo* info = new BuildInfo{
      KVSCOPE_VERSION, KVSCOPE_GIT_COMMIT, KVSCOPE_BUILD_TYPE, KVSCOPE_WITH_CUDA == 1,
      KVSCOPE_WITH_NCCL == 1, KVSCOPE_SANITIZERS == 1};
  return *info;
}

}  // namespace kvscope
