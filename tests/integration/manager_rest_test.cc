// The Manager's multiprocessing-parity operations through forqd's REST
// front end (routes generated from manager.proto), against a real forqd.
// Repeated bytes travel as base64 in JSON ("YQ==" is "a").
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
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
  // Polls the object list until `name` shows `waiters` parked operations
  // (the gateway cancels a call in the background, so there is nothing to
  // wait on but the server's own count).
  bool AwaitWaiters(const std::string& name, int waiters) {
    const std::string want = absl::StrCat(R"("name":")", name, R"(")");
    const std::string count = absl::StrCat(R"("waiters":")", waiters, R"(")");
    const absl::Time end = absl::Now() + absl::Seconds(20);
    while (absl::Now() < end) {
      auto r = HttpCall(forqd_->http_address(), "GET",
                        absl::StrCat("/v1/manager/objects?prefix=", name));
      if (r.ok() && absl::StrContains(r->body, want) &&
          absl::StrContains(r->body, count)) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
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

// A blocking op without `timeout` has no bound of its own over REST: it
// waits until it succeeds or the HTTP client goes away, and then the
// gateway cancels it, so an abandoned get takes no item.
TEST_F(ManagerRestTest, UnboundedGetEndsWithItsHttpClient) {
  Do("GET", "/v1/manager/queues/rq:size");  // creates it, empty
  // A client that sends the request and then hangs up without waiting.
  const std::string& addr = forqd_->http_address();
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port =
      htons(static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1))));
  ASSERT_EQ(inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr), 1);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  const std::string req =
      "POST /v1/manager/queues/rq:get HTTP/1.1\r\nHost: x\r\n"
      "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
  ASSERT_EQ(write(fd, req.data(), req.size()),
            static_cast<ssize_t>(req.size()));
  EXPECT_TRUE(AwaitWaiters("rq", 1)) << "the get did not park";
  close(fd);
  EXPECT_TRUE(AwaitWaiters("rq", 0)) << "the abandoned get stayed parked";
  Do("POST", "/v1/manager/queues/rq:put", R"({"value_text":"a"})");
  EXPECT_THAT(
      Do("POST", "/v1/manager/queues/rq:get?text=true", R"({"timeout":"0s"})"),
      HasSubstr(R"("value_text":"a")"));
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
