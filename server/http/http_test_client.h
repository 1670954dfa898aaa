// A tiny blocking HTTP/1.1 client for tests of the HTTP gateway (unit and
// integration): one request per connection, chunked bodies decoded by Beast.
// Header-only so tests outside server/ can use it without a new library.
#ifndef FORQ_SERVER_HTTP_HTTP_TEST_CLIENT_H_
#define FORQ_SERVER_HTTP_HTTP_TEST_CLIENT_H_

#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/asio/connect.hpp"
#include "boost/asio/io_context.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/read.hpp"
#include "boost/asio/write.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"

namespace forq::server::testing {

struct HttpResponse {
  int status = 0;
  std::string body;
  // Lower-case header names.
  std::map<std::string, std::string> headers;
  std::string header(const std::string& name) const {
    auto it = headers.find(absl::AsciiStrToLower(name));
    return it == headers.end() ? "" : it->second;
  }
};

inline std::pair<std::string, std::string> SplitHostPort(
    const std::string& address) {
  const size_t colon = address.rfind(':');
  return {address.substr(0, colon), address.substr(colon + 1)};
}

// Connects `stream` to `address` with `timeout` for everything it does
// next. Throws on failure, like Asio.
inline void ConnectStream(boost::beast::tcp_stream& stream,
                          const std::string& address,
                          std::chrono::seconds timeout) {
  auto [host, port] = SplitHostPort(address);
  boost::asio::ip::tcp::resolver resolver(stream.get_executor());
  stream.expires_after(timeout);
  stream.connect(resolver.resolve(host, port));
}

// Sends one request to `address` ("127.0.0.1:8080") and reads the whole
// response. Unavailable on a connection or protocol error.
inline absl::StatusOr<HttpResponse> HttpCall(
    const std::string& address, const std::string& method,
    const std::string& target, const std::string& body = "",
    const std::vector<std::pair<std::string, std::string>>& headers = {},
    std::chrono::seconds timeout = std::chrono::seconds(60)) {
  namespace net = boost::asio;
  namespace beast = boost::beast;
  namespace http = beast::http;
  try {
    net::io_context ioc;
    beast::tcp_stream stream(ioc);
    ConnectStream(stream, address, timeout);
    http::request<http::string_body> req;
    req.method_string(method);
    req.target(target);
    req.version(11);
    req.set(http::field::host, address);
    for (const auto& [k, v] : headers) req.set(k, v);
    if (!body.empty() || method == "POST" || method == "PUT") {
      req.body() = body;
      req.set(http::field::content_type, "application/json");
      req.prepare_payload();
    }
    http::write(stream, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(1ull << 30);
    http::read(stream, buffer, parser);
    HttpResponse out;
    const auto& res = parser.get();
    out.status = static_cast<int>(res.result_int());
    out.body = res.body();
    for (const auto& f : res) {
      out.headers[absl::AsciiStrToLower(
          std::string(f.name_string().data(), f.name_string().size()))] =
          std::string(f.value().data(), f.value().size());
    }
    beast::error_code ec;
    stream.socket().shutdown(net::ip::tcp::socket::shutdown_both, ec);
    return out;
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("HTTP ", method, " ", target, ": ", e.what()));
  }
}

// Writes `bytes` as-is and returns everything the server sends until it
// closes the connection or `timeout` passes (for malformed-request tests;
// send "Connection: close" to have a well-formed request end promptly, or
// `half_close` to signal the end of the input).
inline std::string HttpRaw(
    const std::string& address, const std::string& bytes,
    std::chrono::seconds timeout = std::chrono::seconds(10),
    bool half_close = false) {
  namespace net = boost::asio;
  namespace beast = boost::beast;
  try {
    net::io_context ioc;
    beast::tcp_stream stream(ioc);
    ConnectStream(stream, address, timeout);
    net::write(stream, net::buffer(bytes));
    beast::error_code ec;
    if (half_close) {
      stream.socket().shutdown(net::ip::tcp::socket::shutdown_send, ec);
    }
    std::string out;
    char buf[4096];
    while (true) {
      const size_t n = stream.read_some(net::buffer(buf), ec);
      out.append(buf, n);
      if (ec) break;
    }
    return out;
  } catch (const std::exception& e) {
    return absl::StrCat("EXCEPTION: ", e.what());
  }
}

}  // namespace forq::server::testing

#endif  // FORQ_SERVER_HTTP_HTTP_TEST_CLIENT_H_
