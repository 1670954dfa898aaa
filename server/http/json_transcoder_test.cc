#include "server/http/json_transcoder.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "forq/v1/manager.pb.h"
#include "forq/v1/task.pb.h"
#include "tests/testing/status_matchers.h"

namespace forq::server {
namespace {

using ::forq::testing::IsOk;
using ::forq::testing::StatusIs;
using ::testing::HasSubstr;

class JsonTranscoderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = RouteTable::Build(RouteTable::ForqServices());
    ASSERT_THAT(t, IsOk());
    table_ = *std::move(t);
  }

  // Matches `path` and builds its request from `query` and `body`.
  absl::StatusOr<std::vector<std::unique_ptr<google::protobuf::Message>>> Build(
      const std::string& method, const std::string& path,
      const std::string& query, const std::string& body) {
    RouteMatch m = table_->Match(method, path);
    if (m.kind != RouteMatch::Kind::kFound) {
      return absl::NotFoundError("no route");
    }
    auto q = ParseQuery(query);
    if (!q.ok()) return q.status();
    return BuildRequests(*m.route, m.bindings, *q, body);
  }

  template <typename T>
  T One(const std::string& method, const std::string& path,
        const std::string& query, const std::string& body) {
    auto r = Build(method, path, query, body);
    EXPECT_THAT(r, IsOk());
    T out;
    if (r.ok()) out.CopyFrom(*r->at(0));
    return out;
  }

  std::unique_ptr<RouteTable> table_;
};

TEST_F(JsonTranscoderTest, SubmitBodyFillsTheTaskField) {
  auto req = One<forq::v1::SubmitRequest>(
      "POST", "/v1/tasks", "",
      R"({"kind":"echo","payload_text":"hi","priority":3})");
  EXPECT_EQ(req.task().kind(), "echo");
  EXPECT_EQ(req.task().payload_text(), "hi");
  EXPECT_EQ(req.task().priority(), 3);
}

TEST_F(JsonTranscoderTest, CamelCaseBodyFieldsAreAccepted) {
  auto req = One<forq::v1::SubmitRequest>("POST", "/v1/tasks", "",
                                          R"({"payloadText":"x"})");
  EXPECT_EQ(req.task().payload_text(), "x");
}

TEST_F(JsonTranscoderTest, PathAndDurationQueryBind) {
  auto req = One<forq::v1::WaitTaskRequest>("GET", "/v1/tasks/t1:wait",
                                            "timeout=30s", "");
  EXPECT_EQ(req.id(), "t1");
  EXPECT_EQ(req.timeout().seconds(), 30);
}

TEST_F(JsonTranscoderTest, EnumAndIntQueryBind) {
  auto req = One<forq::v1::ListTasksRequest>(
      "GET", "/v1/tasks", "state=QUEUED&page_size=7&queue=a+b", "");
  EXPECT_EQ(req.state(), forq::v1::QUEUED);
  EXPECT_EQ(req.page_size(), 7);
  EXPECT_EQ(req.queue(), "a b");
  req = One<forq::v1::ListTasksRequest>("GET", "/v1/tasks", "state=3", "");
  EXPECT_EQ(req.state(), forq::v1::SUCCEEDED);
}

TEST_F(JsonTranscoderTest, PathVariableWinsOverBody) {
  auto req = One<forq::v1::CancelTaskRequest>("POST", "/v1/tasks/t1:cancel", "",
                                              R"({"id":"other"})");
  EXPECT_EQ(req.id(), "t1");
}

TEST_F(JsonTranscoderTest, EmptyBodyIsAnEmptyObject) {
  auto req =
      One<forq::v1::CancelTaskRequest>("POST", "/v1/tasks/t1:cancel", "", "");
  EXPECT_EQ(req.id(), "t1");
}

TEST_F(JsonTranscoderTest, BadQueryValuesNameTheParameter) {
  EXPECT_THAT(Build("GET", "/v1/tasks", "page_size=abc", ""),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("query parameter 'page_size'")));
  EXPECT_THAT(
      Build("GET", "/v1/tasks", "state=NOPE", ""),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'state'")));
  EXPECT_THAT(
      Build("GET", "/v1/tasks/x:wait", "timeout=forever", ""),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'timeout'")));
  EXPECT_THAT(Build("GET", "/v1/tasks", "bogus=1", ""),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unknown query parameter 'bogus'")));
  EXPECT_THAT(Build("GET", "/v1/tasks", "a=%zz", ""),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("percent-escape")));
}

TEST_F(JsonTranscoderTest, BodyErrorsNameTheProblem) {
  EXPECT_THAT(Build("POST", "/v1/tasks", "", "{\"kind\":"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("invalid JSON body")));
  EXPECT_THAT(Build("POST", "/v1/tasks", "", R"({"nope":1})"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("nope")));
  EXPECT_THAT(
      Build("POST", "/v1/tasks", "", R"({"priority":"high"})"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("priority")));
  EXPECT_THAT(Build("POST", "/v1/tasks", "", "[1,2]"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Build("GET", "/v1/tasks/x", "", "{}"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("takes no request body")));
}

TEST_F(JsonTranscoderTest, TextAliasesFillBytesFields) {
  auto r = Build("POST", "/v1/manager/dicts/d:set", "",
                 R"({"key":"k","value_text":"héllo"})");
  ASSERT_THAT(r, IsOk());
  forq::v1::DictRequest req;
  req.CopyFrom(*r->at(0));
  EXPECT_EQ(req.name(), "d");
  EXPECT_EQ(req.value(), "héllo");

  r = Build("POST", "/v1/manager/dicts/d:update", "",
            R"({"itemsText":{"a":"1","b":"2"}})");
  ASSERT_THAT(r, IsOk());
  req.CopyFrom(*r->at(0));
  EXPECT_EQ(req.items().at("b"), "2");

  EXPECT_THAT(Build("POST", "/v1/manager/dicts/d:set", "",
                    R"({"value":"aGk=","value_text":"hi"})"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("both 'value' and 'value_text'")));
  EXPECT_THAT(
      Build("POST", "/v1/manager/dicts/d:set", "", R"({"value_text":5})"),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("must hold text")));
  EXPECT_THAT(
      Build("POST", "/v1/manager/dicts/d:set", "", R"({"key_text":"x"})"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("key_text")));
}

TEST_F(JsonTranscoderTest, MapBodyIsNdjson) {
  auto r = Build("POST", "/v1/map", "",
                 "{\"header\":{\"kind\":\"echo\",\"ordered\":true}}\n"
                 "\n{\"input\":{\"payload_text\":\"a\"}}\r\n"
                 "{\"input\":{\"payload_text\":\"b\"}}");
  ASSERT_THAT(r, IsOk());
  ASSERT_EQ(r->size(), 3u);
  forq::v1::MapRequest last;
  last.CopyFrom(*r->at(2));
  EXPECT_EQ(last.input().payload_text(), "b");
  EXPECT_THAT(
      Build("POST", "/v1/map", "", "{\"header\":{}}\n{oops}"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2")));
  EXPECT_THAT(Build("POST", "/v1/map", "", ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(JsonTranscoderTest, ResponsesUseProtoNamesAndPrintDefaults) {
  forq::v1::WaitTaskResponse resp;
  resp.mutable_task()->set_id("t1");
  resp.mutable_task()->set_state(forq::v1::SUCCEEDED);
  resp.mutable_task()->set_result("hello");
  auto json = MessageToJson(resp, RenderOptions{});
  ASSERT_THAT(json, IsOk());
  EXPECT_THAT(*json, HasSubstr("\"done\":false"));
  EXPECT_THAT(*json, HasSubstr("\"state\":\"SUCCEEDED\""));
  EXPECT_THAT(*json, HasSubstr("\"result\":\"aGVsbG8=\""));
  EXPECT_THAT(*json, HasSubstr("\"worker_pid\":0"));
}

TEST_F(JsonTranscoderTest, TextModeRendersUtf8BytesAsText) {
  forq::v1::ListTasksResponse resp;
  resp.add_tasks()->set_result("héllo");
  resp.add_tasks()->set_result(std::string("\xff\x00", 2));
  auto json = MessageToJson(resp, RenderOptions{.text = true});
  ASSERT_THAT(json, IsOk());
  EXPECT_THAT(*json, HasSubstr("\"result_text\":\"héllo\""));
  EXPECT_THAT(*json, HasSubstr("\"result\":\"/wA=\""));
  EXPECT_THAT(*json, HasSubstr("\"payload_text\":\"\""));
}

TEST_F(JsonTranscoderTest, TextModeFromQueryOrHeader) {
  const Route* get = table_->Match("GET", "/v1/tasks/x").route;
  EXPECT_EQ(*TextModeRequested(get, {{"text", "true"}}, ""), true);
  EXPECT_EQ(*TextModeRequested(get, {{"text", "0"}}, ""), false);
  EXPECT_EQ(*TextModeRequested(get, {}, "1"), true);
  EXPECT_FALSE(TextModeRequested(get, {{"text", "maybe"}}, "").ok());
  // `text` is not an unknown parameter.
  auto q = ParseQuery("text=1");
  EXPECT_THAT(BuildRequests(*get, {{"id", "x"}}, *q, ""), IsOk());
}

}  // namespace
}  // namespace forq::server
