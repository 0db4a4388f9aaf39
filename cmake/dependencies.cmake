# Every dependency comes from a Debian 12 package (see README); nothing is downloaded.
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json 3.10 CONFIG REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)  # libyaml-cpp-dev: bench config files
find_package(OpenBLAS CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
# gRPC and Protobuf serve the coordinator/worker services (proto/); found here so that a
# machine missing them fails at configure time with the package to install.
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(SQLite3 REQUIRED)  # libsqlite3-dev: the coordinator store
if(KVSCOPE_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
endif()
if(KVSCOPE_BUILD_BENCH)
  find_package(benchmark CONFIG REQUIRED)
endif()

add_library(kvscope_blas INTERFACE)
target_include_directories(kvscope_blas INTERFACE ${OpenBLAS_INCLUDE_DIRS})
target_link_libraries(kvscope_blas INTERFACE ${OpenBLAS_LIBRARIES})
# LAPACKE (liblapacke-dev): the SVD of InfiniGen's offline skewing (engine/infinigen_*).
# Its LAPACK routines resolve to the system LAPACK (OpenBLAS's through Debian alternatives).
find_path(KVSCOPE_LAPACKE_INCLUDE_DIR lapacke.h REQUIRED)
find_library(KVSCOPE_LAPACKE_LIBRARY lapacke REQUIRED)
add_library(kvscope_lapacke INTERFACE)
target_include_directories(kvscope_lapacke INTERFACE ${KVSCOPE_LAPACKE_INCLUDE_DIR})
target_link_libraries(kvscope_lapacke INTERFACE ${KVSCOPE_LAPACKE_LIBRARY} kvscope_blas)
