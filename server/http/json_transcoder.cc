#include "server/http/json_transcoder.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

#include "common/status_macros.h"
#include "server/auth/request_checks.h"
#include "server/http/http_errors.h"

namespace forq::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

google::protobuf::util::JsonParseOptions ParseOptions() {
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  return opts;
}

// The parser's own message ("task.kind: invalid value ...") already names
// the field; strip protobuf's "INVALID_ARGUMENT:" prefix if present.
std::string ParserMessage(const google::protobuf::util::Status& s) {
  std::string m(s.message());
  return m.empty() ? s.ToString() : m;
}

bool TypeHasField(const Descriptor* type, absl::string_view name) {
  return type->FindFieldByName(std::string(name)) != nullptr;
}

// JSON token for one query/path value of a scalar-like field.
absl::StatusOr<std::string> ValueToken(const FieldDescriptor* f,
                                       absl::string_view value) {
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING:
      if (f->type() == FieldDescriptor::TYPE_STRING && !IsValidUtf8(value)) {
        return absl::InvalidArgumentError("value is not valid UTF-8");
      }
      return JsonQuote(value);
    case FieldDescriptor::CPPTYPE_BOOL: {
      auto b = ParseFlag(f->name(), value);
      if (!b.ok()) return b.status();
      return std::string(*b ? "true" : "false");
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const bool numeric =
          !value.empty() &&
          value.find_first_not_of("-0123456789") == absl::string_view::npos;
      if (numeric) return std::string(value);
      return JsonQuote(value);
    }
    case FieldDescriptor::CPPTYPE_MESSAGE: {
      const std::string& name = f->message_type()->full_name();
      if (name == "google.protobuf.Duration" ||
          name == "google.protobuf.Timestamp" ||
          name == "google.protobuf.FieldMask") {
        return JsonQuote(value);
      }
      const FieldDescriptor* inner =
          f->message_type()->FindFieldByName("value");
      if (absl::StartsWith(name, "google.protobuf.") &&
          absl::EndsWith(name, "Value") && inner != nullptr &&
          inner->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
        return ValueToken(inner, value);
      }
      return absl::InvalidArgumentError(
          "is a message; send it in the JSON body");
    }
    default:
      // Numbers go quoted: the JSON mapping accepts "5", "1.5", "NaN" and
      // rejects junk with a message naming the field.
      return JsonQuote(value);
  }
}

// Sets the field at `path` of `msg` from a textual `value` by building a
// small JSON object and letting protobuf's parser check it. A singular field
// is replaced; a repeated field gets the value appended.
absl::Status SetFromText(Message* msg, absl::string_view path,
                         absl::string_view value, absl::string_view origin) {
  const auto fail = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, " '", path, "': ", why));
  };
  auto fields = ResolveFieldPath(msg->GetDescriptor(), path);
  if (!fields.ok()) return fail(fields.status().message());
  const FieldDescriptor* leaf = fields->back();
  if (leaf->is_map()) return fail("map fields cannot be set here");
  auto token = ValueToken(leaf, value);
  if (!token.ok()) return fail(token.status().message());
  std::string json = *token;
  if (leaf->is_repeated()) json = absl::StrCat("[", json, "]");
  for (auto it = fields->rbegin(); it != fields->rend(); ++it) {
    json = absl::StrCat("{", JsonQuote((*it)->name()), ":", json, "}");
  }
  std::unique_ptr<Message> tmp = NewMessage(msg->GetDescriptor());
  auto st = google::protobuf::util::JsonStringToMessage(json, tmp.get(),
                                                        ParseOptions());
  if (!st.ok()) {
    // The parser names the nested path; report the user's own spelling and
    // the reason only.
    std::string reason = ParserMessage(st);
    return fail(absl::StrCat("invalid value '", value, "' (", reason, ")"));
  }
  if (!leaf->is_repeated()) {
    Message* target = msg;
    for (size_t i = 0; i + 1 < fields->size(); ++i) {
      target = target->GetReflection()->MutableMessage(target, (*fields)[i]);
    }
    target->GetReflection()->ClearField(target, leaf);
  }
  msg->MergeFrom(*tmp);
  return absl::OkStatus();
}

const FieldDescriptor* FieldByJsonKey(const Descriptor* type,
                                      absl::string_view key) {
  const std::string k(key);
  const FieldDescriptor* f = type->FindFieldByName(k);
  if (f == nullptr) f = type->FindFieldByCamelcaseName(k);
  return f;
}

bool IsPlainMessage(const FieldDescriptor* f) {
  return f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE &&
         !absl::StartsWith(f->message_type()->full_name(), "google.protobuf.");
}

absl::Status Base64Strings(google::protobuf::Value* v, absl::string_view key) {
  const auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("'", key, "' must hold text (a JSON string)"));
  };
  if (v->has_string_value()) {
    v->set_string_value(absl::Base64Escape(v->string_value()));
    return absl::OkStatus();
  }
  if (v->has_list_value()) {
    for (auto& e : *v->mutable_list_value()->mutable_values()) {
      if (!e.has_string_value()) return bad();
      e.set_string_value(absl::Base64Escape(e.string_value()));
    }
    return absl::OkStatus();
  }
  if (v->has_struct_value()) {
    for (auto& [k, e] : *v->mutable_struct_value()->mutable_fields()) {
      if (!e.has_string_value()) return bad();
      e.set_string_value(absl::Base64Escape(e.string_value()));
    }
    return absl::OkStatus();
  }
  return bad();
}

// Rewrites "<bytes field>_text": "..." (or "<jsonName>Text") into the bytes
// field, base64-encoded, at every level of `s` (a JSON object for `type`).
absl::Status TextKeysToBytes(const Descriptor* type,
                             google::protobuf::Struct* s) {
  auto& fields = *s->mutable_fields();
  std::vector<std::string> keys;
  for (const auto& [k, v] : fields) keys.push_back(k);
  for (const std::string& key : keys) {
    google::protobuf::Value& v = fields[key];
    if (const FieldDescriptor* f = FieldByJsonKey(type, key)) {
      if (f->is_map()) {
        const FieldDescriptor* val = f->message_type()->map_value();
        if (IsPlainMessage(val) && v.has_struct_value()) {
          for (auto& [mk, mv] : *v.mutable_struct_value()->mutable_fields()) {
            if (mv.has_struct_value()) {
              FORQ_RETURN_IF_ERROR(TextKeysToBytes(val->message_type(),
                                                   mv.mutable_struct_value()));
            }
          }
        }
      } else if (IsPlainMessage(f) && v.has_struct_value()) {
        FORQ_RETURN_IF_ERROR(
            TextKeysToBytes(f->message_type(), v.mutable_struct_value()));
      } else if (IsPlainMessage(f) && v.has_list_value()) {
        for (auto& e : *v.mutable_list_value()->mutable_values()) {
          if (e.has_struct_value()) {
            FORQ_RETURN_IF_ERROR(
                TextKeysToBytes(f->message_type(), e.mutable_struct_value()));
          }
        }
      }
      continue;
    }
    absl::string_view base(key);
    if (!absl::ConsumeSuffix(&base, "_text") &&
        !absl::ConsumeSuffix(&base, "Text")) {
      continue;  // an unknown field; the parser reports it
    }
    const FieldDescriptor* target = FieldByJsonKey(type, base);
    const FieldDescriptor* bytes_field =
        target == nullptr  ? nullptr
        : target->is_map() ? target->message_type()->map_value()
                           : target;
    if (bytes_field == nullptr ||
        bytes_field->type() != FieldDescriptor::TYPE_BYTES) {
      continue;
    }
    if (fields.count(target->name()) || fields.count(target->json_name())) {
      return absl::InvalidArgumentError(
          absl::StrCat("both '", target->name(), "' and '", key, "' are set"));
    }
    google::protobuf::Value moved = std::move(v);
    fields.erase(key);
    FORQ_RETURN_IF_ERROR(Base64Strings(&moved, key));
    fields[target->name()] = std::move(moved);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckJsonNesting(absl::string_view json, absl::string_view what) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : json) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid JSON ", what, ": nested deeper than ",
                         kMaxJsonDepth, " levels"));
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return absl::OkStatus();
}

absl::Status CheckEnumValues(const Message& m) {
  const auto* refl = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  refl->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    if (f->type() == FieldDescriptor::TYPE_ENUM) {
      FORQ_RETURN_IF_ERROR(CheckEnumField(m, *f, ""));
    } else if (f->type() == FieldDescriptor::TYPE_MESSAGE && !f->is_map()) {
      const int n = f->is_repeated() ? refl->FieldSize(m, f) : 1;
      for (int i = 0; i < n; ++i) {
        FORQ_RETURN_IF_ERROR(
            CheckEnumValues(f->is_repeated() ? refl->GetRepeatedMessage(m, f, i)
                                             : refl->GetMessage(m, f)));
      }
    }
  }
  return absl::OkStatus();
}

namespace {

absl::Status ParseJsonInto(absl::string_view json, Message* msg,
                           absl::string_view what) {
  if (absl::StripAsciiWhitespace(json).empty()) return absl::OkStatus();
  // protobuf's parser recurses per level and slows down superlinearly with
  // depth: a 40 KB body 20,000 levels deep costs it seconds to minutes of
  // CPU. One linear pass bounds the depth first.
  FORQ_RETURN_IF_ERROR(CheckJsonNesting(json, what));
  std::string rewritten;
  // Text aliases of bytes fields are rare; only then pay for a second parse.
  if (absl::StrContains(json, "_text\"") || absl::StrContains(json, "Text\"")) {
    google::protobuf::Value v;
    if (google::protobuf::util::JsonStringToMessage(
            google::protobuf::StringPiece(json.data(), json.size()), &v)
            .ok() &&
        v.has_struct_value()) {
      absl::Status s =
          TextKeysToBytes(msg->GetDescriptor(), v.mutable_struct_value());
      if (!s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid JSON ", what, ": ", s.message()));
      }
      if (google::protobuf::util::MessageToJsonString(v, &rewritten).ok()) {
        json = rewritten;
      }
    }
  }
  auto st = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), msg,
      ParseOptions());
  if (!st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid JSON ", what, ": ", ParserMessage(st)));
  }
  return absl::OkStatus();
}

absl::Status ApplyParams(
    const Route& route,
    const std::vector<std::pair<std::string, std::string>>& bindings,
    const std::vector<QueryParam>& query, Message* msg) {
  const Descriptor* type = msg->GetDescriptor();
  for (const QueryParam& q : query) {
    if (q.key == kTextParam && !TypeHasField(type, kTextParam)) continue;
    auto fields = ResolveFieldPath(type, q.key);
    if (!fields.ok()) {
      std::vector<std::string> names;
      names.reserve(type->field_count());
      for (int i = 0; i < type->field_count(); ++i) {
        names.push_back(type->field(i)->name());
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown query parameter '", q.key, "' for ", route.label(),
          names.empty()
              ? std::string(" (it takes none)")
              : absl::StrCat(" (fields: ", absl::StrJoin(names, ", "), ")")));
    }
    FORQ_RETURN_IF_ERROR(SetFromText(msg, q.key, q.value, "query parameter"));
  }
  // Path variables last: the path names the resource, whatever the body or
  // query say.
  for (const auto& [var, value] : bindings) {
    FORQ_RETURN_IF_ERROR(SetFromText(msg, var, value, "path variable"));
  }
  return absl::OkStatus();
}

// Replaces valid-UTF-8 bytes fields by `<name>_text` strings in `s`, the
// JSON form of `m`, recursing into nested messages.
void TextifyStruct(const Message& m, google::protobuf::Struct* s) {
  const auto* refl = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  refl->ListFields(m, &fields);
  // Fields at their default value are printed too but not listed; bytes
  // fields among them are empty, which is valid text.
  const Descriptor* type = m.GetDescriptor();
  for (int i = 0; i < type->field_count(); ++i) {
    const FieldDescriptor* f = type->field(i);
    if (f->type() == FieldDescriptor::TYPE_BYTES && !f->is_repeated() &&
        !f->has_presence() && !refl->HasField(m, f)) {
      fields.push_back(f);
    }
  }
  auto& out = *s->mutable_fields();
  for (const FieldDescriptor* f : fields) {
    auto it = out.find(f->name());
    if (it == out.end()) continue;
    const std::string text_name = f->name() + "_text";
    if (f->type() == FieldDescriptor::TYPE_BYTES) {
      if (type->FindFieldByName(text_name) != nullptr) continue;
      if (!f->is_repeated()) {
        std::string v = refl->GetString(m, f);
        if (!IsValidUtf8(v)) continue;
        out.erase(it);
        out[text_name].set_string_value(std::move(v));
      } else {
        google::protobuf::ListValue list;
        bool ok = true;
        for (int k = 0; k < refl->FieldSize(m, f) && ok; ++k) {
          std::string v = refl->GetRepeatedString(m, f, k);
          ok = IsValidUtf8(v);
          list.add_values()->set_string_value(std::move(v));
        }
        if (!ok) continue;
        out.erase(it);
        *out[text_name].mutable_list_value() = std::move(list);
      }
      continue;
    }
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || f->is_map() ||
        absl::StartsWith(f->message_type()->full_name(), "google.protobuf.")) {
      continue;
    }
    if (!f->is_repeated()) {
      if (it->second.has_struct_value()) {
        TextifyStruct(refl->GetMessage(m, f),
                      it->second.mutable_struct_value());
      }
    } else if (it->second.has_list_value()) {
      auto* list = it->second.mutable_list_value();
      for (int k = 0; k < refl->FieldSize(m, f) && k < list->values_size();
           ++k) {
        if (list->values(k).has_struct_value()) {
          TextifyStruct(refl->GetRepeatedMessage(m, f, k),
                        list->mutable_values(k)->mutable_struct_value());
        }
      }
    }
  }
}

}  // namespace

absl::StatusOr<std::vector<QueryParam>> ParseQuery(absl::string_view query) {
  std::vector<QueryParam> out;
  for (absl::string_view piece : absl::StrSplit(query, '&')) {
    if (piece.empty()) continue;
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(piece, absl::MaxSplits('=', 1));
    std::string key(kv.first), value(kv.second);
    std::replace(key.begin(), key.end(), '+', ' ');
    std::replace(value.begin(), value.end(), '+', ' ');
    QueryParam p;
    if (!PercentDecode(key, &p.key)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "malformed percent-escape in query parameter name '", kv.first, "'"));
    }
    if (!PercentDecode(value, &p.value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "malformed percent-escape in query parameter '", p.key, "'"));
    }
    if (p.key.empty()) {
      return absl::InvalidArgumentError("query parameter with an empty name");
    }
    out.push_back(std::move(p));
  }
  return out;
}

absl::StatusOr<bool> ParseFlag(absl::string_view name,
                               absl::string_view value) {
  const std::string v = absl::AsciiStrToLower(value);
  if (v.empty() || v == "1" || v == "true" || v == "yes") return true;
  if (v == "0" || v == "false" || v == "no") return false;
  return absl::InvalidArgumentError(
      absl::StrCat("'", name, "' must be true or false, got '", value, "'"));
}

absl::StatusOr<bool> TextModeRequested(const Route* route,
                                       const std::vector<QueryParam>& query,
                                       absl::string_view header) {
  bool text = false;
  if (!header.empty()) {
    auto h = ParseFlag(kTextHeader, header);
    if (!h.ok()) return h.status();
    text = *h;
  }
  if (route != nullptr && TypeHasField(route->rpc->input_type(), kTextParam)) {
    return text;
  }
  for (const QueryParam& q : query) {
    if (q.key != kTextParam) continue;
    auto v = ParseFlag(kTextParam, q.value);
    if (!v.ok()) return v.status();
    text = *v;
  }
  return text;
}

std::unique_ptr<Message> NewMessage(const Descriptor* type) {
  const Message* proto =
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(type);
  if (proto == nullptr) {
    // Types outside the generated pool (not expected for forq.v1); the
    // factory lives forever because its prototypes must outlive messages.
    static auto* dynamic = new google::protobuf::DynamicMessageFactory();
    proto = dynamic->GetPrototype(type);
  }
  return std::unique_ptr<Message>(proto->New());
}

absl::StatusOr<std::vector<std::unique_ptr<Message>>> BuildRequests(
    const Route& route,
    const std::vector<std::pair<std::string, std::string>>& bindings,
    const std::vector<QueryParam>& query, absl::string_view body) {
  const Descriptor* input = route.rpc->input_type();
  std::vector<std::unique_ptr<Message>> out;
  if (route.client_streaming()) {
    for (const QueryParam& q : query) {
      if (q.key == kTextParam && !TypeHasField(input, kTextParam)) continue;
      return absl::InvalidArgumentError(
          absl::StrCat(route.label(),
                       " is a streaming route and takes no query parameter "
                       "(got '",
                       q.key, "')"));
    }
    int line_no = 0;
    for (absl::string_view line : absl::StrSplit(body, '\n')) {
      ++line_no;
      line = absl::StripAsciiWhitespace(line);
      if (line.empty()) continue;
      auto msg = NewMessage(input);
      FORQ_RETURN_IF_ERROR(ParseJsonInto(
          line, msg.get(), absl::StrCat("on body line ", line_no)));
      absl::Status enums = CheckEnumValues(*msg);
      if (!enums.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "invalid value on body line ", line_no, ": ", enums.message()));
      }
      out.push_back(std::move(msg));
    }
    if (out.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          route.label(), " needs a body of newline-delimited JSON ",
          input->full_name(), " messages"));
    }
    return out;
  }
  auto msg = NewMessage(input);
  if (route.body.empty()) {
    if (!absl::StripAsciiWhitespace(body).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(route.label(), " takes no request body"));
    }
  } else if (route.body == "*") {
    FORQ_RETURN_IF_ERROR(ParseJsonInto(body, msg.get(), "body"));
  } else {
    Message* sub =
        msg->GetReflection()->MutableMessage(msg.get(), route.body_field);
    FORQ_RETURN_IF_ERROR(ParseJsonInto(
        body, sub,
        absl::StrCat("body (a ", route.body_field->message_type()->full_name(),
                     ")")));
  }
  FORQ_RETURN_IF_ERROR(ApplyParams(route, bindings, query, msg.get()));
  // proto3 enums are open: the JSON parser takes any number (state=99).
  FORQ_RETURN_IF_ERROR(CheckEnumValues(*msg));
  out.push_back(std::move(msg));
  return out;
}

absl::StatusOr<std::string> MessageToJson(const Message& m,
                                          const RenderOptions& options) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.always_print_primitive_fields = true;
  opts.preserve_proto_field_names = true;
  std::string json;
  auto st = google::protobuf::util::MessageToJsonString(m, &json, opts);
  if (!st.ok()) {
    return absl::InternalError(absl::StrCat("cannot render ",
                                            m.GetDescriptor()->full_name(),
                                            " as JSON: ", ParserMessage(st)));
  }
  if (!options.text) return json;
  google::protobuf::Value value;
  if (!google::protobuf::util::JsonStringToMessage(json, &value).ok() ||
      !value.has_struct_value()) {
    return json;
  }
  TextifyStruct(m, value.mutable_struct_value());
  std::string text_json;
  if (!google::protobuf::util::MessageToJsonString(value, &text_json).ok()) {
    return json;
  }
  return text_json;
}

}  // namespace forq::server
