// The Manager's multiprocessing-parity operations through forqd's REST
// front end (routes generated from manager.proto), against a real forqd.
// Repeated bytes travel as base64 in JSON ("YQ==" is "a").
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

#include "server/http/http_test_client.h"
#include "tests/testing/forqd_process.h"
#include "tests/testing/status_matchers.h"

namespace forq {
namespace {

using ::forq::server::testing::HttpCall;
using ::forq::testing::ForqdProcess;
using ::testing::HasSubstr;

class ManagerRestTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto p = ForqdProcess::Start({.workers = 1});
    if (p.ok()) {
      forqd_ = p->release();
    } else {
      start_error_ = new std::string(p.status().ToString());
    }
  }
  void SetUp() override {
    // A failed start fails every case (a failure in SetUpTestSuite would
    // only skip them).
    ASSERT_NE(forqd_, nullptr) << (start_error_ ? *start_error_ : "");
  }
  static void TearDownTestSuite() {
    delete forqd_;
    forqd_ = nullptr;
  }
  // Returns the body; expects `code`.
  std::string Do(const std::string& method, const std::string& path,
                 const std::string& body = "", int code = 200) {
    auto r = HttpCall(forqd_->http_address(), method, path, body);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return "";
    EXPECT_EQ(r->status, code) << method << " " << path << " " << body << "\n"
                               << r->body;
    return r->body;
  }
  static ForqdProcess* forqd_;
  static std::string* start_error_;
};

ForqdProcess* ManagerRestTest::forqd_ = nullptr;
std::string* ManagerRestTest::start_error_ = nullptr;

TEST_F(ManagerRestTest, DictValuesAndPopItemInInsertionOrder) {
  Do("POST", "/v1/manager/dicts/rd:set", R"({"key":"b","value_text":"2"})");
  Do("POST", "/v1/manager/dicts/rd:set", R"({"key":"a","value_text":"1"})");
  EXPECT_THAT(Do("GET", "/v1/manager/dicts/rd:keys"),
              HasSubstr(R"("keys":["b","a"])"));
  EXPECT_THAT(Do("GET", "/v1/manager/dicts/rd:values"),
              HasSubstr(R"("values":["Mg==","MQ=="])"));
  const std::string popped =
      Do("POST", "/v1/manager/dicts/rd:popitem?text=true", "{}");
  EXPECT_THAT(popped, HasSubstr(R"("key":"a")"));
  EXPECT_THAT(popped, HasSubstr(R"("value_text":"1")"));
  Do("POST", "/v1/manager/dicts/rd:popitem", "{}");
  Do("POST", "/v1/manager/dicts/rd:popitem", "{}", 404);
}

TEST_F(ManagerRestTest, ListParityOps) {
  Do("POST", "/v1/manager/lists/rl:extend",
     R"({"values":["Mw==","MQ==","Mg==","MQ=="]})");  // 3 1 2 1
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:index", R"({"value_text":"1"})"),
              HasSubstr(R"("count":"1")"));
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:index",
                 R"({"value_text":"1","start":"2"})"),
              HasSubstr(R"("count":"3")"));
  Do("POST", "/v1/manager/lists/rl:index", R"({"value_text":"9"})", 404);
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:count", R"({"value_text":"1"})"),
              HasSubstr(R"("count":"2")"));
  EXPECT_THAT(
      Do("POST", "/v1/manager/lists/rl:contains", R"({"value_text":"2"})"),
      HasSubstr(R"("found":true)"));
  Do("POST", "/v1/manager/lists/rl:sort", R"({"sort_key":"int"})");
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:slice", "{}"),
              HasSubstr(R"("values":["MQ==","MQ==","Mg==","Mw=="])"));
  Do("POST", "/v1/manager/lists/rl:reverse", "{}");
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:slice", "{}"),
              HasSubstr(R"("values":["Mw==","Mg==","MQ==","MQ=="])"));
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:repeat", R"({"n":"2"})"),
              HasSubstr(R"("length":"8")"));
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:deleteSlice",
                 R"({"start":"1","stop":"8"})"),
              HasSubstr(R"("length":"1")"));
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:setSlice",
                 R"({"start":"0","stop":"1","values":["YQ==","Yg=="]})"),
              HasSubstr(R"("length":"2")"));
  EXPECT_THAT(Do("POST", "/v1/manager/lists/rl:slice", "{}"),
              HasSubstr(R"("values":["YQ==","Yg=="])"));
  Do("POST", "/v1/manager/lists/rl:sort", R"({"sort_key":"int"})", 400);
}

TEST_F(ManagerRestTest, TypedArrayAndValue) {
  // Array('h', [1, 2, 3]) from initial values; out-of-range element.
  EXPECT_THAT(Do("POST", "/v1/manager/arrays/ra:len",
                 R"({"typecode":"h","values":["MQ==","Mg==","Mw=="]})"),
              HasSubstr(R"("length":"3")"));
  Do("POST", "/v1/manager/arrays/ra:set",
     R"({"index":"0","value_text":"40000"})", 400);  // OUT_OF_RANGE → 400
  Do("POST", "/v1/manager/arrays/ra:setSlice",
     R"({"start":"1","stop":"3","values":["Nw==","OA=="]})");
  EXPECT_THAT(Do("POST", "/v1/manager/arrays/ra:slice", "{}"),
              HasSubstr(R"("values":["MQ==","Nw==","OA=="])"));
  // Value('B', 0).
  EXPECT_THAT(Do("POST", "/v1/manager/values/rv:set?text=true",
                 R"({"typecode":"B","value_text":"255"})"),
              HasSubstr(R"("value_text":"255")"));
  Do("POST", "/v1/manager/values/rv:add", R"({"delta":"1"})", 400);
}

TEST_F(ManagerRestTest, BarrierOfOne) {
  EXPECT_THAT(Do("POST", "/v1/manager/barriers/rb:wait", R"({"parties":"1"})"),
              HasSubstr(R"("broken":false)"));
  EXPECT_THAT(Do("GET", "/v1/manager/barriers/rb"),
              HasSubstr(R"("parties":"1")"));
  Do("POST", "/v1/manager/barriers/rb:abort", "{}");
  EXPECT_THAT(Do("GET", "/v1/manager/barriers/rb"),
              HasSubstr(R"("broken":true)"));
  Do("POST", "/v1/manager/barriers/rb:wait", "{}", 409);
  Do("POST", "/v1/manager/barriers/rb:reset", "{}");
  EXPECT_THAT(Do("GET", "/v1/manager/barriers/rb"),
              HasSubstr(R"("broken":false)"));
}

TEST_F(ManagerRestTest, GenericCallNamesTypeAndOp) {
  Do("POST", "/v1/manager:call?text=true",
     R"({"type":"OBJECT_TYPE_DICT","op":"set","name":"rc","key":"k","value_text":"v"})");
  EXPECT_THAT(
      Do("POST", "/v1/manager:call?text=true",
         R"({"type":"OBJECT_TYPE_DICT","op":"get","name":"rc","key":"k"})"),
      HasSubstr(R"("value_text":"v")"));
  Do("POST", "/v1/manager:call",
     R"({"type":"OBJECT_TYPE_DICT","op":"append","name":"rc"})", 400);
  Do("POST", "/v1/manager:call",
     R"({"type":"OBJECT_TYPE_DICT","op":"nosuchop","name":"rc"})", 400);
}

}  // namespace
}  // namespace forq
