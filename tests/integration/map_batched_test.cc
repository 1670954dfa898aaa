// MapBatched (several inputs per request, several results per response)
// and the one-result-per-message Map kept for REST, against a real forqd.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

#include "forq/client.h"
#include "forq/map.h"
#include "forq/v1/task.grpc.pb.h"
#include "server/http/http_test_client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/shared_forqd.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::SharedForqdTest;
using ::testing::HasSubstr;

class MapBatchedTest : public SharedForqdTest<MapBatchedTest> {};

// A bad input (unknown kind) in the middle of a window: only it fails,
// although its whole request message was refused as one batch first.
TEST_F(MapBatchedTest, BadInputInABatchFailsAloneAndOrderHolds) {
  std::vector<MapInput> inputs;
  inputs.reserve(40);
  for (int i = 0; i < 40; ++i) {
    inputs.push_back(i == 17 ? MapInput("no-such-kind", "x")
                             : MapInput(absl::StrCat(i)));
  }
  MapOptions o;
  o.window = 64;  // all 40 go out in one request message
  MapStream stream = client_->Map("echo", inputs, o);
  std::vector<MapItem> items;
  for (const MapItem& r : stream) items.push_back(r);
  ASSERT_THAT(stream.status(), IsOk());
  ASSERT_EQ(items.size(), 40u);
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(items[i].index, static_cast<uint64_t>(i));
    if (i == 17) {
      EXPECT_EQ(items[i].status.code(), absl::StatusCode::kInvalidArgument)
          << items[i].status;
      EXPECT_TRUE(items[i].task_id.empty());
    } else {
      EXPECT_TRUE(items[i].ok()) << i << ": " << items[i].status;
      EXPECT_EQ(items[i].result, absl::StrCat(i));
    }
  }
}

TEST_F(MapBatchedTest, ResultsArriveSeveralPerMessage) {
  auto stub = v1::TaskService::NewStub(grpc::CreateChannel(
      forqd_->grpc_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto rpc = stub->MapBatched(&ctx);
  v1::MapRequest req;
  req.mutable_header()->set_kind("echo");
  req.mutable_header()->set_ordered(true);
  req.mutable_header()->set_window(500);
  ASSERT_TRUE(rpc->Write(req));
  req.Clear();
  // The first input is slow, so the results behind it are ready when it
  // ends and go out together.
  v1::MapInput* first = req.mutable_inputs()->add_inputs();
  first->set_kind("sleep");
  first->set_payload("300");
  for (int i = 1; i < 500; ++i) {
    req.mutable_inputs()->add_inputs()->set_payload(absl::StrCat(i));
  }
  ASSERT_TRUE(rpc->Write(req));
  ASSERT_TRUE(rpc->WritesDone());
  v1::MapResults resp;
  int messages = 0;
  uint64_t next = 0;
  while (rpc->Read(&resp)) {
    ++messages;
    for (const v1::MapResult& r : resp.results()) {
      EXPECT_EQ(r.index(), next);
      EXPECT_EQ(r.result(), next == 0 ? "300" : absl::StrCat(next));
      ++next;
    }
  }
  grpc::Status s = rpc->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(next, 500u);
  // Everything that finished behind the slow first item came in the
  // message that carried it.
  EXPECT_LT(messages, 500);
}

TEST_F(MapBatchedTest, RestMapStillAnswersOneResultPerLine) {
  auto r = server::testing::HttpCall(
      forqd_->http_address(), "POST", "/v1/map?text=true",
      "{\"header\":{\"kind\":\"echo\",\"ordered\":true}}\n"
      "{\"input\":{\"payload_text\":\"a\"}}\n"
      "{\"inputs\":{\"inputs\":[{\"payload_text\":\"b\"},"
      "{\"payload_text\":\"c\"}]}}\n",
      {{"Content-Type", "application/x-ndjson"}});
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->status, 200) << r->body;
  std::vector<std::string> lines =
      absl::StrSplit(r->body, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << r->body;
  EXPECT_THAT(lines[0], HasSubstr("\"a\""));
  EXPECT_THAT(lines[1], HasSubstr("\"b\""));
  EXPECT_THAT(lines[2], HasSubstr("\"c\""));
}

TEST_F(MapBatchedTest, RestMapBatchedAnswersResultsLines) {
  auto r = server::testing::HttpCall(
      forqd_->http_address(), "POST", "/v1/map:batched?text=true",
      "{\"header\":{\"kind\":\"echo\",\"ordered\":true}}\n"
      "{\"inputs\":{\"inputs\":[{\"payload_text\":\"x\"},"
      "{\"payload_text\":\"y\"}]}}\n",
      {{"Content-Type", "application/x-ndjson"}});
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_THAT(r->body, HasSubstr("\"results\""));
  EXPECT_THAT(r->body, HasSubstr("\"x\""));
  EXPECT_THAT(r->body, HasSubstr("\"y\""));
}

}  // namespace
}  // namespace forq
