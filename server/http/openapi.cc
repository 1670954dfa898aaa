#include "server/http/openapi.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

#include "server/http/http_errors.h"
#include "server/http/json_transcoder.h"

namespace forq::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;

// A minimal YAML writer: every scalar string is emitted as a JSON string,
// which is valid YAML and needs no escaping rules of its own.
class Yaml {
 public:
  void Key(int indent, absl::string_view key) {
    absl::StrAppend(&out_, std::string(indent, ' '), Scalar(key), ":\n");
  }
  void Pair(int indent, absl::string_view key, absl::string_view value) {
    absl::StrAppend(&out_, std::string(indent, ' '), Scalar(key), ": ",
                    JsonQuote(value), "\n");
  }
  void Raw(int indent, absl::string_view key, absl::string_view value) {
    absl::StrAppend(&out_, std::string(indent, ' '), Scalar(key), ": ", value,
                    "\n");
  }
  void Item(int indent, absl::string_view value) {
    absl::StrAppend(&out_, std::string(indent, ' '), "- ", JsonQuote(value),
                    "\n");
  }
  // "- " opening a mapping item; the caller continues at indent + 2.
  void ItemStart(int indent, absl::string_view key, absl::string_view value) {
    absl::StrAppend(&out_, std::string(indent, ' '), "- ", Scalar(key), ": ",
                    JsonQuote(value), "\n");
  }
  std::string& out() { return out_; }

 private:
  static std::string Scalar(absl::string_view s) {
    // Digits alone would read as a YAML integer (status codes must be
    // strings in OpenAPI).
    if (s.find_first_not_of("0123456789") == absl::string_view::npos) {
      return JsonQuote(s);
    }
    for (char c : s) {
      if (!(isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
            c == '.')) {
        return JsonQuote(s);
      }
    }
    return std::string(s);
  }
  std::string out_;
};

std::string SchemaName(const std::string& full_name) {
  return absl::StrReplaceAll(
      full_name, {{"google.protobuf.", "protobuf."}, {"forq.v1.", ""}});
}

std::string Ref(const std::string& full_name) {
  return absl::StrCat("#/components/schemas/", SchemaName(full_name));
}

class SchemaCollector {
 public:
  void AddMessage(const Descriptor* d) {
    if (IsWellKnown(d->full_name())) return;
    if (!messages_.emplace(d->full_name(), d).second) return;
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      if (f->is_map()) {
        AddField(f->message_type()->map_value());
      } else {
        AddField(f);
      }
    }
  }

  void Write(Yaml& y, int indent) {
    for (const auto& [name, e] : enums_) {
      y.Key(indent, SchemaName(name));
      y.Pair(indent + 2, "type", "string");
      y.Key(indent + 2, "enum");
      for (int i = 0; i < e->value_count(); ++i) {
        y.Item(indent + 4, e->value(i)->name());
      }
    }
    for (const auto& [name, d] : messages_) {
      y.Key(indent, SchemaName(name));
      y.Pair(indent + 2, "type", "object");
      if (d->oneof_decl_count() > 0) {
        std::string desc = "At most one field of each group is set:";
        for (int i = 0; i < d->oneof_decl_count(); ++i) {
          absl::StrAppend(&desc, " ", d->oneof_decl(i)->name(), " (");
          for (int k = 0; k < d->oneof_decl(i)->field_count(); ++k) {
            absl::StrAppend(&desc, k ? ", " : "",
                            d->oneof_decl(i)->field(k)->name());
          }
          absl::StrAppend(&desc, ")");
        }
        y.Pair(indent + 2, "description", desc);
      }
      if (d->field_count() == 0) {
        y.Raw(indent + 2, "properties", "{}");
        continue;
      }
      y.Key(indent + 2, "properties");
      for (int i = 0; i < d->field_count(); ++i) {
        const FieldDescriptor* f = d->field(i);
        y.Key(indent + 4, f->name());
        WriteFieldSchema(y, indent + 6, f);
      }
    }
  }

  static void WriteFieldSchema(Yaml& y, int indent, const FieldDescriptor* f) {
    if (f->is_map()) {
      y.Pair(indent, "type", "object");
      y.Key(indent, "additionalProperties");
      WriteSingular(y, indent + 2, f->message_type()->map_value());
      return;
    }
    if (f->is_repeated()) {
      y.Pair(indent, "type", "array");
      y.Key(indent, "items");
      WriteSingular(y, indent + 2, f);
      return;
    }
    WriteSingular(y, indent, f);
  }

 private:
  static bool IsWellKnown(const std::string& name) {
    return name.rfind("google.protobuf.", 0) == 0;
  }

  void AddField(const FieldDescriptor* f) {
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      AddMessage(f->message_type());
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_ENUM) {
      enums_.emplace(f->enum_type()->full_name(), f->enum_type());
    }
  }

  static void WriteSingular(Yaml& y, int indent, const FieldDescriptor* f) {
    switch (f->type()) {
      case FieldDescriptor::TYPE_STRING:
        y.Pair(indent, "type", "string");
        return;
      case FieldDescriptor::TYPE_BYTES:
        y.Pair(indent, "type", "string");
        y.Pair(indent, "format", "byte");
        y.Pair(indent, "description",
               "base64; with text mode, valid UTF-8 is returned as "
               "<name>_text instead");
        return;
      case FieldDescriptor::TYPE_BOOL:
        y.Pair(indent, "type", "boolean");
        return;
      case FieldDescriptor::TYPE_DOUBLE:
      case FieldDescriptor::TYPE_FLOAT:
        y.Pair(indent, "type", "number");
        return;
      case FieldDescriptor::TYPE_INT32:
      case FieldDescriptor::TYPE_SINT32:
      case FieldDescriptor::TYPE_SFIXED32:
        y.Pair(indent, "type", "integer");
        y.Pair(indent, "format", "int32");
        return;
      case FieldDescriptor::TYPE_UINT32:
      case FieldDescriptor::TYPE_FIXED32:
        y.Pair(indent, "type", "integer");
        y.Pair(indent, "format", "int64");
        y.Raw(indent, "minimum", "0");
        return;
      case FieldDescriptor::TYPE_INT64:
      case FieldDescriptor::TYPE_SINT64:
      case FieldDescriptor::TYPE_SFIXED64:
      case FieldDescriptor::TYPE_UINT64:
      case FieldDescriptor::TYPE_FIXED64:
        y.Pair(indent, "type", "string");
        y.Pair(indent, "format", "int64");
        y.Pair(indent, "description",
               "64-bit integer as a decimal string (JSON mapping)");
        return;
      case FieldDescriptor::TYPE_ENUM:
        y.Pair(indent, "$ref", Ref(f->enum_type()->full_name()));
        return;
      default:
        break;
    }
    const std::string& name = f->message_type()->full_name();
    if (name == "google.protobuf.Duration") {
      y.Pair(indent, "type", "string");
      y.Pair(indent, "description", "duration, e.g. \"30s\" or \"0.250s\"");
      y.Pair(indent, "example", "30s");
    } else if (name == "google.protobuf.Timestamp") {
      y.Pair(indent, "type", "string");
      y.Pair(indent, "format", "date-time");
    } else if (IsWellKnown(name)) {
      y.Pair(indent, "type", "object");
    } else {
      y.Pair(indent, "$ref", Ref(name));
    }
  }

  std::map<std::string, const Descriptor*> messages_;
  std::map<std::string, const EnumDescriptor*> enums_;
};

// Top-level scalar fields a route fills from query parameters: those not
// bound by the path and not carried by the body.
std::vector<const FieldDescriptor*> QueryFields(const Route& r) {
  std::vector<const FieldDescriptor*> out;
  if (r.body == "*") return out;
  std::set<std::string> bound;
  for (const Route::Segment& s : r.segments) {
    if (!s.var.empty()) bound.insert(s.var);
  }
  const Descriptor* in = r.rpc->input_type();
  for (int i = 0; i < in->field_count(); ++i) {
    const FieldDescriptor* f = in->field(i);
    if (bound.count(f->name()) || f == r.body_field || f->is_map()) continue;
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE &&
        f->message_type()->full_name() != "google.protobuf.Duration" &&
        f->message_type()->full_name() != "google.protobuf.Timestamp") {
      continue;
    }
    out.push_back(f);
  }
  return out;
}

std::string Lower(std::string s) {
  for (char& c : s) {
    c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

void WriteErrorResponses(Yaml& y, int indent) {
  y.Key(indent, "default");
  y.Pair(indent + 2, "description",
         "Error: HTTP status from the gRPC code (see docs/api.md)");
  y.Key(indent + 2, "content");
  y.Key(indent + 4, "application/json");
  y.Key(indent + 6, "schema");
  y.Pair(indent + 8, "$ref", "#/components/schemas/Error");
}

void WriteRoute(Yaml& y, const Route& r) {
  const int op = 4;
  y.Key(op, Lower(r.http_method));
  y.Pair(op + 2, "operationId",
         absl::StrCat(r.rpc->service()->name(), "_", r.rpc->name()));
  y.Key(op + 2, "tags");
  y.Item(op + 4, r.rpc->service()->name());
  y.Pair(op + 2, "summary", absl::StrCat("gRPC ", r.rpc->full_name()));
  std::string desc;
  if (r.server_streaming()) {
    desc =
        "Streams newline-delimited JSON, one message per line; an error "
        "after the stream started arrives as a last line {\"error\": "
        "{...}}.";
  }
  if (r.client_streaming()) {
    absl::StrAppend(&desc, desc.empty() ? "" : " ",
                    "The request body is newline-delimited JSON, one ",
                    r.rpc->input_type()->name(), " per line.");
  }
  if (!desc.empty()) y.Pair(op + 2, "description", desc);

  y.Key(op + 2, "parameters");
  for (const Route::Segment& s : r.segments) {
    if (s.var.empty()) continue;
    y.ItemStart(op + 4, "name", s.var);
    y.Pair(op + 6, "in", "path");
    y.Raw(op + 6, "required", "true");
    y.Key(op + 6, "schema");
    y.Pair(op + 8, "type", "string");
  }
  for (const FieldDescriptor* f : QueryFields(r)) {
    y.ItemStart(op + 4, "name", f->name());
    y.Pair(op + 6, "in", "query");
    if (f->is_repeated()) y.Raw(op + 6, "explode", "true");
    y.Key(op + 6, "schema");
    SchemaCollector::WriteFieldSchema(y, op + 8, f);
  }
  y.ItemStart(op + 4, "name", std::string(kTextParam));
  y.Pair(op + 6, "in", "query");
  y.Pair(op + 6, "description",
         "Render bytes fields holding valid UTF-8 as <name>_text strings "
         "(same as header X-Forq-Text: true).");
  y.Key(op + 6, "schema");
  y.Pair(op + 8, "type", "boolean");

  if (!r.body.empty()) {
    y.Key(op + 2, "requestBody");
    y.Raw(op + 4, "required", r.client_streaming() ? "true" : "false");
    y.Key(op + 4, "content");
    y.Key(op + 6,
          r.client_streaming() ? "application/x-ndjson" : "application/json");
    y.Key(op + 8, "schema");
    const Descriptor* body = r.body_field != nullptr
                                 ? r.body_field->message_type()
                                 : r.rpc->input_type();
    y.Pair(op + 10, "$ref", Ref(body->full_name()));
  }
  y.Key(op + 2, "responses");
  y.Key(op + 4, "200");
  y.Pair(op + 6, "description", "OK");
  y.Key(op + 6, "content");
  y.Key(op + 8,
        r.server_streaming() ? "application/x-ndjson" : "application/json");
  y.Key(op + 10, "schema");
  y.Pair(op + 12, "$ref", Ref(r.rpc->output_type()->full_name()));
  WriteErrorResponses(y, op + 4);
}

void WriteBuiltin(Yaml& y, absl::string_view path, absl::string_view summary,
                  absl::string_view content_type, absl::string_view schema,
                  bool has_503) {
  y.Key(2, path);
  y.Key(4, "get");
  y.Pair(6, "operationId", absl::StrCat("Builtin_", path.substr(1)));
  y.Key(6, "tags");
  y.Item(8, "Operations");
  y.Pair(6, "summary", summary);
  y.Key(6, "responses");
  for (absl::string_view code : {"200", "503"}) {
    if (code == "503" && !has_503) continue;
    y.Key(8, code);
    y.Pair(10, "description", code == "200" ? "OK" : "Not ready");
    y.Key(10, "content");
    y.Key(12, content_type);
    y.Key(14, "schema");
    if (schema.empty()) {
      y.Pair(16, "type", "string");
    } else {
      y.Pair(16, "$ref", absl::StrCat("#/components/schemas/", schema));
    }
  }
}

}  // namespace

std::string GenerateOpenApi(const RouteTable& routes) {
  Yaml y;
  y.out() =
      "# Generated from the (forq.v1.http) options in api/forq/v1/*.proto by\n"
      "# server/http/openapi.cc; do not edit. Regenerate with\n"
      "#   FORQ_UPDATE_OPENAPI=1 <build>/server/forq_http_test "
      "--gtest_filter='OpenApi*'\n"
      "# (forqd also serves it at GET /openapi.yaml).\n";
  y.Pair(0, "openapi", "3.0.3");
  y.Key(0, "info");
  y.Pair(2, "title", "forq REST API");
  y.Pair(2, "version", "v1");
  y.Pair(2, "description",
         "REST/JSON front end of forqd. Every route calls the gRPC method "
         "named in its summary; bodies use protobuf's JSON mapping (proto "
         "or lowerCamelCase field names accepted, proto names printed). "
         "See docs/api.md.");
  y.Key(0, "servers");
  y.ItemStart(2, "url", "http://127.0.0.1:8080");

  // Group routes by template, in a stable order.
  std::map<std::string, std::vector<const Route*>> by_path;
  SchemaCollector schemas;
  for (const Route& r : routes.routes()) {
    by_path[r.path_template].push_back(&r);
    schemas.AddMessage(r.rpc->input_type());
    schemas.AddMessage(r.rpc->output_type());
  }
  y.Key(0, "paths");
  for (auto& [path, list] : by_path) {
    std::sort(list.begin(), list.end(), [](const Route* a, const Route* b) {
      return a->http_method < b->http_method;
    });
    y.Key(2, path);
    for (const Route* r : list) WriteRoute(y, *r);
  }
  WriteBuiltin(y, "/healthz", "Liveness: 200 while the process serves.",
               "application/json", "Health", false);
  WriteBuiltin(y, "/readyz",
               "Readiness: store open, live workers, not draining.",
               "application/json", "Readiness", true);
  WriteBuiltin(y, "/metrics", "Prometheus text exposition format 0.0.4.",
               "text/plain", "", false);

  y.Key(0, "components");
  y.Key(2, "schemas");
  y.Key(4, "Error");
  y.Pair(6, "type", "object");
  y.Key(6, "properties");
  y.Key(8, "code");
  y.Pair(10, "type", "integer");
  y.Pair(10, "description", "gRPC status code number");
  y.Key(8, "status");
  y.Pair(10, "type", "string");
  y.Pair(10, "description", "gRPC status code name, e.g. NOT_FOUND");
  y.Key(8, "message");
  y.Pair(10, "type", "string");
  y.Key(8, "details");
  y.Pair(10, "type", "array");
  y.Key(10, "items");
  y.Pair(12, "type", "object");
  y.Pair(12, "description",
         "google.protobuf.Any in JSON form: {\"@type\": ..., ...}");
  y.Key(4, "Health");
  y.Pair(6, "type", "object");
  y.Key(6, "properties");
  y.Key(8, "status");
  y.Pair(10, "type", "string");
  y.Key(4, "Readiness");
  y.Pair(6, "type", "object");
  y.Key(6, "properties");
  for (const char* f : {"status", "message"}) {
    y.Key(8, f);
    y.Pair(10, "type", "string");
  }
  for (const char* f : {"ready", "store_open", "draining"}) {
    y.Key(8, f);
    y.Pair(10, "type", "boolean");
  }
  y.Key(8, "live_workers");
  y.Pair(10, "type", "integer");
  schemas.Write(y, 4);
  return std::move(y.out());
}

}  // namespace forq::server
