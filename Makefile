# forq — the two commands: `make run` and `make test`. See README.md.
BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
ASAN_BUILD ?= build-asan
CHECK_BUILD ?= build-check
TSAN_BUILD ?= build-tsan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 30
FUZZ_TARGETS = fuzz_frame_decoder fuzz_manager_codec fuzz_local_socket fuzz_rest_json fuzz_route_match
CLANG_CC ?= clang-14
CLANG_CXX ?= clang++-14
CLANG_TIDY ?= run-clang-tidy-14
JOBS ?= $(shell nproc)
CTEST_JOBS ?= 2
FORQD_FLAGS ?=

.PHONY: all deps configure build build-forq run test test-unit test-asan test-tsan test-fault bench format check-format check check-configure lint clean

all: build

deps:
	@./deploy/install-deps.sh

$(BUILD)/build.ninja: | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

configure: deps $(BUILD)/build.ninja

# Everything, the benchmarks included.
build: configure
	cmake --build $(BUILD) -j $(JOBS) --target all benchmarks

# forqd, the CLI, the libraries, examples and tests: not the benchmarks
# (what `make run` and `make test`, hence CI, need).
build-forq: configure
	cmake --build $(BUILD) -j $(JOBS)

run: build-forq
	./$(BUILD)/server/forqd $(FORQD_FLAGS)

test: build-forq
	ctest --test-dir $(BUILD) --output-on-failure -j $(CTEST_JOBS) --timeout 600

test-unit: build-forq
	ctest --test-dir $(BUILD) --output-on-failure -j $(CTEST_JOBS) -L unit

# Unit and integration tests (forqd too) under AddressSanitizer +
# UndefinedBehaviorSanitizer (LeakSanitizer included); the integration tests
# start the instrumented forqd of the same tree. UBSan only prints a finding
# and goes on, which a passing test's hidden output would swallow:
# halt_on_error makes it end the process. Every process (tests, forqd, its
# workers, the CLI) writes its reports to $(ASAN_BUILD)/asan-reports/; any
# report fails the target, also one from a forqd whose test passed or from a
# worker forqd replaced. ASan writes its reports unsymbolized, which takes
# no time, and they are symbolized (asan_symbolize) after the run: a forqd
# that a test kills right after a finding, while ASan still looked up its
# symbols, would otherwise leave only the report's first line.
ASAN_REPORTS = $(CURDIR)/$(ASAN_BUILD)/asan-reports
ASAN_SYMBOLIZE ?= asan_symbolize-14
test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFORQ_SANITIZE=address,undefined \
	  -DFORQ_BUILD_BENCH=OFF
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	rm -rf $(ASAN_REPORTS) && mkdir -p $(ASAN_REPORTS)
	ASAN_OPTIONS="log_path=$(ASAN_REPORTS)/asan symbolize=0" \
	UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 log_path=$(ASAN_REPORTS)/ubsan" \
	  ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(CTEST_JOBS) \
	  -L 'unit|integration' --timeout 900; rc=$$?; \
	reports=$$(ls $(ASAN_REPORTS)/* 2>/dev/null); \
	if [ -n "$$reports" ]; then for r in $$reports; do echo "== $$r"; \
	  $(ASAN_SYMBOLIZE) < $$r 2>/dev/null || cat $$r; done; \
	  echo "test-asan: sanitizer reports in $(ASAN_REPORTS)"; exit 1; fi; \
	echo "test-asan: no sanitizer reports"; exit $$rc

# Unit and integration tests (forqd too) under ThreadSanitizer, built with
# clang. tests/tsan.supp silences only Debian's uninstrumented libraries.
# Every process (tests, forqd, its workers, the CLI) writes its reports to
# $(TSAN_BUILD)/tsan-reports/; any report fails the target, also one from a
# forqd whose test passed.
TSAN_REPORTS = $(CURDIR)/$(TSAN_BUILD)/tsan-reports
# Left out under TSan: the install test (it links an uninstrumented consumer
# against the instrumented libraries) and the two thousand-call thread-count
# tests (TSan's 5-15x slowdown breaks their 60 s budgets on 2 cores; they
# run in `make test`). The PostgreSQL tests run, but for the kill tests
# (label fault, as in `make test`; docs/decisions.md, "ThreadSanitizer").
TSAN_EXCLUDE = ^(InstallTest\.|HttpTest\.ThousandConcurrentWaitsUseFewThreads|ManagerServiceTest\.ThousandBlockedQueueGetsUseFewThreads)
test-tsan: deps
	cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=$(CLANG_CC) -DCMAKE_CXX_COMPILER=$(CLANG_CXX) \
	  -DFORQ_SANITIZE=thread -DFORQ_BUILD_BENCH=OFF
	cmake --build $(TSAN_BUILD) -j $(JOBS)
	rm -rf $(TSAN_REPORTS) && mkdir -p $(TSAN_REPORTS)
	TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp second_deadlock_stack=1 log_path=$(TSAN_REPORTS)/report" \
	  ctest --test-dir $(TSAN_BUILD) --output-on-failure -j $(CTEST_JOBS) \
	  -L 'unit|integration|postgres' -LE fault -E '$(TSAN_EXCLUDE)' \
	  --timeout 900; rc=$$?; \
	reports=$$(grep -l ThreadSanitizer $(TSAN_REPORTS)/* 2>/dev/null); \
	if [ -n "$$reports" ]; then cat $$reports; \
	  echo "test-tsan: ThreadSanitizer reports in $(TSAN_REPORTS)"; exit 1; fi; \
	echo "test-tsan: no ThreadSanitizer reports"; exit $$rc

# A clang tree for check and lint: configured, proto headers generated.
check-configure: deps
	cmake -S . -B $(CHECK_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_C_COMPILER=$(CLANG_CC) -DCMAKE_CXX_COMPILER=$(CLANG_CXX) \
	  -DFORQ_SYNTAX_ONLY=ON
	ninja -C $(CHECK_BUILD) $$(ninja -C $(CHECK_BUILD) -t targets all \
	  | sed -n 's/^\([^:]*\.pb\.h\): .*/\1/p')

# clang thread-safety analysis (-Wthread-safety -Werror) over all of forq's
# code: clang's front end (-fsyntax-only) on every forq source file; no code
# generation, no links, no tests.
check: check-configure
	cmake -DSOURCE_DIR=$(CURDIR) -DBUILD_DIR=$(CURDIR)/$(CHECK_BUILD) \
	  -P cmake/syntax_check.cmake
	ninja -C $(CHECK_BUILD) -f syntax_check.ninja -j $(JOBS) -k 0

# clang-tidy with .clang-tidy over every forq source file and header.
lint: check-configure
	$(CLANG_TIDY) -p $(CHECK_BUILD) -quiet -j $(JOBS) \
	  -header-filter='^$(CURDIR)/(common|worker|server|client|tests|bench|examples)/' \
	  '^$(CURDIR)/(common|worker|server|client|tests|bench|examples)/.*\.cc$$'

# Long fault-injection loops (kill -9 of forqd and workers); not part of `make test`.
test-fault: build-forq
	FORQ_FAULT_LOOPS=30 ctest --test-dir $(BUILD) --output-on-failure -L fault

# libFuzzer targets (fuzz/) built with clang-14, ASan and UBSan; each runs
# FUZZ_SECONDS (default 60) from the committed corpus. fuzz-smoke: 30 s each.
# Not part of `make test` (which replays the corpus only).
.PHONY: fuzz-build fuzz fuzz-smoke
fuzz-build: deps
	cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=$(CLANG_CC) -DCMAKE_CXX_COMPILER=$(CLANG_CXX) \
	  -DFORQ_SANITIZE=address,undefined -DFORQ_FUZZ=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_TARGETS)

fuzz: fuzz-build
	./fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_ONLY)

fuzz-smoke: fuzz-build
	./fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SMOKE_SECONDS) $(FUZZ_ONLY)

# Builds the forqd image with podman (CONTAINER_ENGINE=docker works too) and
# runs it with tokens: CLI through published ports, /metrics, drain on stop,
# restart from the volume, non-root, --cpus; then the compose cluster
# (test-compose). Not part of `make test` (minutes of CPU).
.PHONY: test-container test-compose
test-container: build
	./tests/container/container_test.sh $(BUILD)/client/forq
	./tests/container/compose_test.sh $(BUILD)/client/forq

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
	rm -rf $(BUILD) $(ASAN_BUILD) $(CHECK_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD)
