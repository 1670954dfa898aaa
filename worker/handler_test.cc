#include "worker/handler.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "tests/testing/status_matchers.h"
#include "worker/builtins.h"

namespace forq::worker {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;

class FakeContext : public TaskContext {
 public:
  absl::string_view task_id() const override { return "t1"; }
  int attempt() const override { return attempt_; }
  absl::Time deadline() const override { return absl::InfiniteFuture(); }
  bool cancelled() const override { return cancelled_; }
  void Progress(double, absl::string_view) override {}
  absl::StatusOr<std::string> Call(absl::string_view) override {
    return absl::UnimplementedError("no manager in this test");
  }
  int attempt_ = 1;
  bool cancelled_ = false;
};

absl::StatusOr<std::string> RunKind(const HandlerRegistry& r,
                                    absl::string_view kind,
                                    absl::string_view payload,
                                    FakeContext& ctx) {
  const Handler* h = r.Find(kind);
  if (h == nullptr) return absl::NotFoundError("no handler");
  std::string out;
  absl::Status s = (*h)(ctx, payload, &out);
  if (!s.ok()) return s;
  return out;
}

TEST(HandlerRegistryTest, RejectsDuplicateAndEmptyKinds) {
  HandlerRegistry r;
  auto h = [](TaskContext&, absl::string_view, std::string*) {
    return absl::OkStatus();
  };
  EXPECT_THAT(r.Register("a", h), IsOk());
  EXPECT_THAT(r.Register("a", h), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(r.Register("", h), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(r.Find("b"), nullptr);
  EXPECT_THAT(r.Kinds(), ::testing::ElementsAre("a"));
}

TEST(BuiltinsTest, ComputeExpectedResults) {
  HandlerRegistry r;
  ASSERT_THAT(RegisterBuiltins(r), IsOk());
  FakeContext ctx;
  EXPECT_EQ(*RunKind(r, "echo", "hi", ctx), "hi");
  EXPECT_EQ(*RunKind(r, "primes", "100", ctx), "25");
  EXPECT_EQ(*RunKind(r, "sha256", "abc", ctx),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(*RunKind(r, "sleep", "1", ctx), "1");
  EXPECT_THAT(RunKind(r, "primes", "x", ctx),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(RunKind(r, "fail", "boom", ctx),
              StatusIs(absl::StatusCode::kFailedPrecondition, "boom"));
}

TEST(BuiltinsTest, FlakySucceedsOnTheRequestedAttempt) {
  HandlerRegistry r;
  ASSERT_THAT(RegisterBuiltins(r), IsOk());
  FakeContext ctx;
  ctx.attempt_ = 2;
  EXPECT_THAT(RunKind(r, "flaky", "3", ctx),
              StatusIs(absl::StatusCode::kUnavailable));
  ctx.attempt_ = 3;
  EXPECT_EQ(*RunKind(r, "flaky", "3", ctx), "ok on attempt 3");
}

TEST(BuiltinsTest, SleepStopsWhenCancelled) {
  HandlerRegistry r;
  ASSERT_THAT(RegisterBuiltins(r), IsOk());
  FakeContext ctx;
  ctx.cancelled_ = true;
  EXPECT_THAT(RunKind(r, "sleep", "60000", ctx),
              StatusIs(absl::StatusCode::kCancelled));
}

}  // namespace
}  // namespace forq::worker
