// The operation table (api/forq/v1/manager_ops.h) and manager.proto agree:
// every row names a ManagerService RPC, and every RPC is a row or one of
// the few generic ones.
#include "api/forq/v1/manager_ops.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

#include "forq/v1/manager.pb.h"

namespace forq::server {
namespace {

TEST(ManagerOpsTest, EveryRowHasItsRpcAndEveryRpcIsARow) {
  const google::protobuf::ServiceDescriptor* svc =
      v1::ManagerCall::descriptor()->file()->FindServiceByName(
          "ManagerService");
  ASSERT_NE(svc, nullptr);
  std::set<std::string> rows;
  for (const v1::ManagerOpSpec& s : v1::kManagerOps) {
    EXPECT_TRUE(rows.insert(s.rpc).second) << "duplicate rpc " << s.rpc;
    EXPECT_NE(svc->FindMethodByName(s.rpc), nullptr)
        << "manager.proto lacks rpc " << s.rpc;
    EXPECT_EQ(v1::FindManagerOp(s.type, s.op), &s)
        << "duplicate row " << v1::ManagerTypeName(s.type) << " "
        << v1::ManagerOpName(s.op);
    v1::ManagerOp op{};
    EXPECT_TRUE(v1::ParseManagerOp(v1::ManagerOpName(s.op), &op));
    EXPECT_EQ(op, s.op);
  }
  const std::set<std::string> generic = {"Call", "Session", "ListObjects",
                                         "DeleteObject", "Watch"};
  for (int i = 0; i < svc->method_count(); ++i) {
    const std::string& m = svc->method(i)->name();
    EXPECT_TRUE(rows.count(m) != 0 || generic.count(m) != 0)
        << "rpc " << m << " has no row in the operation table";
  }
}

TEST(ManagerOpsTest, TypeNumbersMatchTheProtoEnum) {
  for (const v1::ManagerOpSpec& s : v1::kManagerOps) {
    const int n = static_cast<int>(s.type);
    EXPECT_TRUE(v1::ObjectType_IsValid(n)) << n;
    v1::ManagerType parsed{};
    EXPECT_TRUE(v1::ParseManagerType(v1::ManagerTypeName(s.type), &parsed));
    EXPECT_EQ(parsed, s.type);
  }
}

}  // namespace
}  // namespace forq::server
