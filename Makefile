# Convenience targets over CMake. `make demo` builds and runs the main job; `make test`
# builds everything and runs the whole test suite (a CUDA-enabled build when nvcc is
# present, plus an AddressSanitizer + UndefinedBehaviorSanitizer build), as CI does.
JOBS ?= $(shell nproc)
BUILD ?= build
ASAN_BUILD ?= build-asan
SHARED ?= $(abspath ../shared)
export KVSCOPE_SHARED_DIR ?= $(SHARED)

.PHONY: all build demo test test-fast test-asan bench clean

all: build

build:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSCOPE_CUDA=AUTO
	cmake --build $(BUILD) -j $(JOBS)

# The main job: the quickstart sweep (4 KV strategies x 3 request rates x 3 repeats) run by
# an embedded coordinator and worker, then the comparison table (docs/sweeps.md).
demo: build
	$(BUILD)/cli/kvscope run examples/quickstart.yaml --dir $(BUILD)/quickstart

# The regular build's suite, then the sanitizer build's.
test: test-fast test-asan

test-fast: build
	cd $(BUILD) && ctest -LE gpu --output-on-failure -j $(JOBS) --timeout 900

test-asan:
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVSCOPE_CUDA=OFF \
	  -DKVSCOPE_SANITIZE=ON -DKVSCOPE_BUILD_BENCH=OFF -DCMAKE_CXX_FLAGS=-O1
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest -LE gpu --output-on-failure -j $(JOBS) --timeout 900

bench: build
	$(BUILD)/bench/engine_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
