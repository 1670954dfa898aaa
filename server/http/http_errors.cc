#include "server/http/http_errors.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/wire_format_lite.h"

namespace forq::server {
namespace {

using google::protobuf::internal::WireFormatLite;

constexpr absl::string_view kRetryInfoType =
    "type.googleapis.com/google.rpc.RetryInfo";

// Length of the UTF-8 sequence starting at s[i], or 0 if it is malformed.
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  if (c < 0x80) return 1;
  size_t n;
  uint32_t cp;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return n;
}

// Calls `field_bytes` with the bytes of each length-delimited field number
// `field` of the serialized message `bytes`, in order. False when the wire
// format is broken or `field_bytes` returns false. The google.rpc messages
// below are read this way because google/rpc/*.proto are not shipped with
// Debian's gRPC headers.
template <class Fn>
bool ForEachBytesField(absl::string_view bytes, int field, Fn field_bytes) {
  google::protobuf::io::CodedInputStream in(
      reinterpret_cast<const uint8_t*>(bytes.data()),
      static_cast<int>(bytes.size()));
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return true;
    if (WireFormatLite::GetTagFieldNumber(tag) == field &&
        WireFormatLite::GetTagWireType(tag) ==
            WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      std::string value;
      uint32_t len;
      if (!in.ReadVarint32(&len) || !in.ReadString(&value, len) ||
          !field_bytes(value)) {
        return false;
      }
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
}

// The details of a serialized google.rpc.Status (field 3, repeated Any).
bool ParseRpcStatusDetails(absl::string_view bytes,
                           std::vector<google::protobuf::Any>* details) {
  return ForEachBytesField(bytes, 3, [&](const std::string& any_bytes) {
    google::protobuf::Any any;
    if (!any.ParseFromString(any_bytes)) return false;
    details->push_back(std::move(any));
    return true;
  });
}

// RetryInfo { Duration retry_delay = 1; }.
bool ParseRetryInfo(const std::string& bytes,
                    google::protobuf::Duration* delay) {
  return ForEachBytesField(bytes, 1, [&](const std::string& d) {
    return delay->ParseFromString(d);
  });
}

std::string RenderBody(absl::StatusCode code, absl::string_view message,
                       absl::string_view details_json) {
  return absl::StrCat("{\"code\":", static_cast<int>(code),
                      ",\"status\":", JsonQuote(CodeName(code)),
                      ",\"message\":", JsonQuote(message), ",\"details\":[",
                      details_json, "]}");
}

}  // namespace

int HttpStatusForCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnknown:
      return 500;
    case absl::StatusCode::kInvalidArgument:
      return 400;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
      return 409;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kFailedPrecondition:
      return 409;
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kInternal:
      return 500;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDataLoss:
      return 500;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    default:
      return 500;
  }
}

std::string CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kUnknown:
      return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

HttpError MakeHttpError(absl::StatusCode code, absl::string_view message) {
  HttpError e;
  e.http_status = HttpStatusForCode(code);
  e.body = RenderBody(code, message, "");
  return e;
}

HttpError MakeHttpErrorFromGrpc(int code, absl::string_view message,
                                absl::string_view error_details) {
  const auto status_code = (code >= 0 && code <= 16)
                               ? static_cast<absl::StatusCode>(code)
                               : absl::StatusCode::kUnknown;
  HttpError e;
  e.http_status = HttpStatusForCode(status_code);
  std::vector<google::protobuf::Any> details;
  std::string details_json;
  if (!error_details.empty() &&
      ParseRpcStatusDetails(error_details, &details)) {
    for (const google::protobuf::Any& any : details) {
      std::string one;
      if (any.type_url() == kRetryInfoType) {
        google::protobuf::Duration delay;
        if (ParseRetryInfo(any.value(), &delay)) {
          const double secs = delay.seconds() + delay.nanos() / 1e9;
          e.retry_after_seconds = static_cast<int>(std::ceil(secs));
          std::string d;
          if (google::protobuf::util::MessageToJsonString(delay, &d).ok()) {
            one = absl::StrCat("{\"@type\":", JsonQuote(any.type_url()),
                               ",\"retryDelay\":", d, "}");
          }
        }
      } else {
        google::protobuf::util::JsonPrintOptions opts;
        opts.preserve_proto_field_names = true;
        if (!google::protobuf::util::MessageToJsonString(any, &one, opts)
                 .ok()) {
          one.clear();
        }
      }
      if (one.empty()) {
        one = absl::StrCat(
            "{\"@type\":", JsonQuote(any.type_url()),
            ",\"value\":", JsonQuote(absl::Base64Escape(any.value())), "}");
      }
      if (!details_json.empty()) details_json += ",";
      details_json += one;
    }
  }
  e.body = RenderBody(status_code, message, details_json);
  return e;
}

std::string JsonQuote(absl::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c >= 0x80) {
      const size_t n = Utf8SequenceLength(s, i);
      if (n == 0) {
        out += "\xEF\xBF\xBD";  // U+FFFD replacement character
        ++i;
      } else {
        out.append(s.data() + i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
  return out;
}

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = Utf8SequenceLength(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

}  // namespace forq::server
