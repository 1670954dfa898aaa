# forq — the two commands: `make run` and `make test`. See README.md.
BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CTEST_JOBS ?= 2
FORQD_FLAGS ?=

.PHONY: all deps configure build run test test-unit test-asan test-fault bench format check-format clean

all: build

deps:
	@./deploy/install-deps.sh

$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

configure: deps $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/server/forqd $(FORQD_FLAGS)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(CTEST_JOBS) --timeout 600

test-unit: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(CTEST_JOBS) -L unit

# Unit tests under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFORQ_SANITIZE=address,undefined
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(CTEST_JOBS) -L unit

# Long fault-injection loops (kill -9 of forqd and workers); not part of `make test`.
test-fault: build
	FORQ_FAULT_LOOPS=30 ctest --test-dir $(BUILD) --output-on-failure -L fault

# Builds the forqd image with podman (CONTAINER_ENGINE=docker works too) and
# runs it: CLI through published ports, /metrics, drain on stop, restart from
# the volume, non-root, --cpus. Not part of `make test` (minutes of CPU).
.PHONY: test-container test-compose
test-container: build
	./tests/container/container_test.sh $(BUILD)/client/forq

# docker-compose.yml under podman-compose: health, tasks on every node,
# Prometheus targets and rules, dashboard expressions, drain on stop.
test-compose: build
	./tests/container/compose_test.sh $(BUILD)/client/forq

bench: build
	./bench/run.sh $(BUILD)

format:
	git ls-files '*.h' '*.cc' | xargs clang-format -i

check-format:
	git ls-files '*.h' '*.cc' | xargs clang-format --dry-run --Werror

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
