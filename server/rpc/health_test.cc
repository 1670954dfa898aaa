#include "server/rpc/health.h"

#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"

namespace forq::server {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;

const HealthService& Find(const std::string& name) {
  for (const HealthService& s : HealthServices()) {
    if (s.name == name) return s;
  }
  ADD_FAILURE() << "no health entry for '" << name << "'";
  static const HealthService kMissing;
  return kMissing;
}

TEST(HealthReporterTest, ListsTheServerAndEachForqService) {
  EXPECT_THAT(
      HealthServices(),
      ElementsAre(Field(&HealthService::name, ""),
                  Field(&HealthService::name, "forq.v1.TaskService"),
                  Field(&HealthService::name, "forq.v1.PoolService"),
                  Field(&HealthService::name, "forq.v1.ManagerService")));
}

TEST(HealthReporterTest, DrainTakesTheServerAndTaskServiceOutOnly) {
  EXPECT_FALSE(ServingIn(Find(""), ServingPhase::kDraining));
  EXPECT_FALSE(ServingIn(Find("forq.v1.TaskService"), ServingPhase::kDraining));
  EXPECT_TRUE(ServingIn(Find("forq.v1.PoolService"), ServingPhase::kDraining));
  EXPECT_TRUE(
      ServingIn(Find("forq.v1.ManagerService"), ServingPhase::kDraining));
}

TEST(HealthReporterTest, EveryNameServesWhenServingAndNoneWhenStopping) {
  for (const HealthService& s : HealthServices()) {
    EXPECT_TRUE(ServingIn(s, ServingPhase::kServing)) << s.name;
    EXPECT_FALSE(ServingIn(s, ServingPhase::kStopping)) << s.name;
  }
}

TEST(HealthReporterTest, PhaseFollowsDrainStateUntilStopping) {
  std::atomic<bool> draining{false};
  HealthReporter reporter([&draining] { return draining.load(); });
  EXPECT_EQ(reporter.phase(), ServingPhase::kServing);
  draining = true;
  EXPECT_EQ(reporter.phase(), ServingPhase::kDraining);
  draining = false;
  EXPECT_EQ(reporter.phase(), ServingPhase::kServing);
  reporter.SetStopping();
  EXPECT_EQ(reporter.phase(), ServingPhase::kStopping);
  draining = true;
  EXPECT_EQ(reporter.phase(), ServingPhase::kStopping);
}

// Records what the reporter publishes, in order.
class RecordingHealth final : public grpc::HealthCheckServiceInterface {
 public:
  void SetServingStatus(const std::string& name, bool serving) override {
    published.emplace_back(name, serving);
  }
  void SetServingStatus(bool serving) override {
    published.emplace_back("*", serving);
  }
  std::vector<std::pair<std::string, bool>> published;
};

TEST(HealthReporterTest, TheWholeServerNameChangesAfterEveryServiceName) {
  RecordingHealth health;
  HealthReporter reporter([] { return false; });
  reporter.Attach(&health);
  health.published.clear();
  reporter.SetStopping();
  using P = std::pair<std::string, bool>;
  EXPECT_THAT(health.published,
              ElementsAre(P{"forq.v1.ManagerService", false},
                          P{"forq.v1.PoolService", false},
                          P{"forq.v1.TaskService", false}, P{"", false}));
}

TEST(HealthReporterTest, RefreshWithoutAHealthServiceIsHarmless) {
  HealthReporter reporter([] { return true; });
  reporter.Refresh();
  reporter.SetStopping();
  EXPECT_EQ(ServingPhaseName(reporter.phase()), "stopping");
}

}  // namespace
}  // namespace forq::server
