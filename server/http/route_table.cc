#include "server/http/route_table.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

#include "forq/v1/http.pb.h"
#include "forq/v1/manager.pb.h"
#include "forq/v1/pool.pb.h"
#include "forq/v1/task.pb.h"

namespace forq::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::MethodDescriptor;
using google::protobuf::ServiceDescriptor;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

const FieldDescriptor* FindField(const Descriptor* type,
                                 absl::string_view name) {
  const std::string n(name);
  const FieldDescriptor* f = type->FindFieldByName(n);
  if (f == nullptr) f = type->FindFieldByCamelcaseName(n);
  if (f == nullptr) {
    for (int i = 0; i < type->field_count(); ++i) {
      if (type->field(i)->json_name() == n) return type->field(i);
    }
  }
  return f;
}

absl::Status ParseTemplate(const std::string& path, const Descriptor* input,
                           Route* route) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError("path must start with '/'");
  }
  std::set<std::string> vars;
  for (absl::string_view piece :
       absl::StrSplit(absl::string_view(path).substr(1), '/')) {
    if (piece.empty()) {
      return absl::InvalidArgumentError("empty path segment");
    }
    Route::Segment seg;
    if (piece[0] == '{') {
      const size_t close = piece.find('}');
      if (close == absl::string_view::npos || close == 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("malformed variable in segment '", piece, "'"));
      }
      seg.var = std::string(piece.substr(1, close - 1));
      seg.suffix = std::string(piece.substr(close + 1));
      if (!seg.suffix.empty() && seg.suffix[0] != ':') {
        return absl::InvalidArgumentError(absl::StrCat(
            "text after {", seg.var, "} must start with ':' in '", piece, "'"));
      }
      if (seg.suffix.find_first_of("{}") != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("one variable per segment: '", piece, "'"));
      }
      auto fields = ResolveFieldPath(input, seg.var);
      if (!fields.ok()) return fields.status();
      const FieldDescriptor* leaf = fields->back();
      if (leaf->is_repeated() ||
          leaf->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        return absl::InvalidArgumentError(absl::StrCat(
            "path variable {", seg.var, "} must be a singular scalar field"));
      }
      if (!vars.insert(seg.var).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("variable {", seg.var, "} appears twice"));
      }
      route->specificity += static_cast<int>(seg.suffix.size()) + 1;
    } else {
      if (piece.find_first_of("{}") != absl::string_view::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("a variable must start its segment: '", piece, "'"));
      }
      seg.literal = std::string(piece);
      route->specificity += static_cast<int>(piece.size()) + 1;
    }
    route->segments.push_back(std::move(seg));
  }
  return absl::OkStatus();
}

absl::StatusOr<Route> MakeRoute(const MethodDescriptor* m) {
  const auto err = [m](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("http option of ", m->full_name(), ": ", what));
  };
  if (!m->options().HasExtension(forq::v1::http)) {
    return err("missing (forq.v1.http) option");
  }
  const forq::v1::HttpRule& rule = m->options().GetExtension(forq::v1::http);
  Route r;
  r.http_method = rule.method();
  r.path_template = rule.path();
  r.body = rule.body();
  r.rpc = m;
  r.grpc_method = absl::StrCat("/", m->service()->full_name(), "/", m->name());
  static const std::set<std::string> kMethods = {"GET", "POST", "PUT", "DELETE",
                                                 "PATCH"};
  if (kMethods.count(r.http_method) == 0) {
    return err(absl::StrCat("unsupported method '", r.http_method, "'"));
  }
  absl::Status s = ParseTemplate(r.path_template, m->input_type(), &r);
  if (!s.ok()) return err(s.message());
  if (!r.body.empty() && r.body != "*") {
    const FieldDescriptor* f = FindField(m->input_type(), r.body);
    if (f == nullptr || f->is_repeated() ||
        f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
      return err(absl::StrCat("body '", r.body,
                              "' must name a singular message field"));
    }
    r.body_field = f;
  }
  if (m->client_streaming() && r.body != "*") {
    return err("a client-streaming RPC needs body \"*\"");
  }
  if ((r.http_method == "GET" || r.http_method == "DELETE") &&
      !r.body.empty()) {
    return err("GET and DELETE routes take no body");
  }
  return r;
}

// Matches one template against split, still-encoded path segments.
bool MatchTemplate(const Route& r, const std::vector<absl::string_view>& parts,
                   std::vector<std::pair<std::string, std::string>>* out) {
  if (parts.size() != r.segments.size()) return false;
  std::vector<std::pair<std::string, std::string>> bindings;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Route::Segment& seg = r.segments[i];
    absl::string_view part = parts[i];
    if (seg.var.empty()) {
      std::string decoded;
      if (!PercentDecode(part, &decoded) || decoded != seg.literal) {
        return false;
      }
      continue;
    }
    // The suffix (":wait") is matched on the raw text, so an id containing
    // an encoded ':' (%3A) never splits into a verb.
    if (part.size() <= seg.suffix.size() ||
        part.substr(part.size() - seg.suffix.size()) != seg.suffix) {
      return false;
    }
    absl::string_view raw = part.substr(0, part.size() - seg.suffix.size());
    if (!seg.suffix.empty() && raw.find(':') != absl::string_view::npos) {
      return false;
    }
    std::string value;
    if (!PercentDecode(raw, &value) || value.empty()) return false;
    bindings.emplace_back(seg.var, std::move(value));
  }
  *out = std::move(bindings);
  return true;
}

}  // namespace

bool PercentDecode(absl::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = HexValue(in[i + 1]);
    const int lo = HexValue(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

absl::StatusOr<std::vector<const FieldDescriptor*>> ResolveFieldPath(
    const Descriptor* type, absl::string_view path) {
  std::vector<const FieldDescriptor*> fields;
  const Descriptor* cur = type;
  for (absl::string_view step : absl::StrSplit(path, '.')) {
    if (cur == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", path, "': ", fields.back()->name(), " is not a message"));
    }
    const FieldDescriptor* f = FindField(cur, step);
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", path, "': ", cur->full_name(), " has no field '", step, "'"));
    }
    if (!fields.empty() && fields.back()->is_repeated()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", path, "': ", fields.back()->name(), " is repeated"));
    }
    fields.push_back(f);
    cur = f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !f->is_map()
              ? f->message_type()
              : nullptr;
  }
  return fields;
}

absl::StatusOr<std::unique_ptr<RouteTable>> RouteTable::Build(
    const std::vector<const ServiceDescriptor*>& services) {
  std::unique_ptr<RouteTable> table(new RouteTable());
  std::set<std::pair<std::string, std::string>> seen;
  for (const ServiceDescriptor* svc : services) {
    for (int i = 0; i < svc->method_count(); ++i) {
      absl::StatusOr<Route> r = MakeRoute(svc->method(i));
      if (!r.ok()) return r.status();
      // Two templates that differ only in variable names are the same route.
      std::string shape;
      for (const Route::Segment& s : r->segments) {
        absl::StrAppend(&shape, "/", s.var.empty() ? s.literal : "{}",
                        s.suffix);
      }
      if (!seen.insert({r->http_method, shape}).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("http option of ", svc->method(i)->full_name(), ": ",
                         r->http_method, " ", r->path_template,
                         " is already taken by another RPC"));
      }
      table->routes_.push_back(*std::move(r));
    }
  }
  return table;
}

std::vector<const ServiceDescriptor*> RouteTable::ForqServices() {
  std::vector<const ServiceDescriptor*> out;
  // Touching a message of each file links its object (forq_api is a static
  // library) and so registers its descriptors in the generated pool.
  out.push_back(
      forq::v1::SubmitRequest::descriptor()->file()->FindServiceByName(
          "TaskService"));
  out.push_back(
      forq::v1::GetPoolRequest::descriptor()->file()->FindServiceByName(
          "PoolService"));
  out.push_back(forq::v1::DictRequest::descriptor()->file()->FindServiceByName(
      "ManagerService"));
  out.erase(std::remove(out.begin(), out.end(), nullptr), out.end());
  return out;
}

RouteMatch RouteTable::Match(absl::string_view http_method,
                             absl::string_view path) const {
  RouteMatch result;
  if (path.empty() || path[0] != '/') return result;
  std::vector<absl::string_view> parts = absl::StrSplit(path.substr(1), '/');
  int best = -1;
  std::vector<
      std::pair<const Route*, std::vector<std::pair<std::string, std::string>>>>
      candidates;
  for (const Route& r : routes_) {
    std::vector<std::pair<std::string, std::string>> bindings;
    if (!MatchTemplate(r, parts, &bindings)) continue;
    if (r.specificity > best) {
      best = r.specificity;
      candidates.clear();
    }
    if (r.specificity == best) candidates.emplace_back(&r, std::move(bindings));
  }
  if (candidates.empty()) return result;
  std::vector<std::string> allow;
  for (auto& [route, bindings] : candidates) {
    if (route->http_method == http_method) {
      result.kind = RouteMatch::Kind::kFound;
      result.route = route;
      result.bindings = std::move(bindings);
      return result;
    }
    allow.push_back(route->http_method);
  }
  std::sort(allow.begin(), allow.end());
  allow.erase(std::unique(allow.begin(), allow.end()), allow.end());
  result.kind = RouteMatch::Kind::kWrongMethod;
  result.allow = absl::StrJoin(allow, ", ");
  return result;
}

}  // namespace forq::server
