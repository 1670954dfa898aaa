#include "server/auth/request_checks.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"

#include "common/status_macros.h"
#include "forq/v1/task.pb.h"

namespace forq::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// Identifier-like string fields (not payloads, messages or values).
bool IsIdentifier(const FieldDescriptor* f) {
  if (f->type() != FieldDescriptor::TYPE_STRING) return false;
  const std::string& n = f->name();
  return n == "id" || n == "ids" || absl::EndsWith(n, "_id") ||
         absl::EndsWith(n, "_ids") || n == "queue" || n == "kind" ||
         n == "name" || n == "session" || n == "owner" ||
         n == "idempotency_key" || n == "prefix";
}

// google.protobuf.Duration / Timestamp rules (duration.proto).
absl::Status CheckTime(const Message& m, const std::string& path) {
  const Descriptor* d = m.GetDescriptor();
  const Descriptor::WellKnownType type = d->well_known_type();
  if (type != Descriptor::WELLKNOWNTYPE_DURATION &&
      type != Descriptor::WELLKNOWNTYPE_TIMESTAMP) {
    return absl::OkStatus();
  }
  const Reflection* r = m.GetReflection();
  const FieldDescriptor* sf = d->FindFieldByName("seconds");
  const FieldDescriptor* nf = d->FindFieldByName("nanos");
  if (sf == nullptr || nf == nullptr) return absl::OkStatus();
  const int64_t s = r->GetInt64(m, sf);
  const int32_t n = r->GetInt32(m, nf);
  if (type == Descriptor::WELLKNOWNTYPE_DURATION) {
    constexpr int64_t kMax = 315576000000;  // 10,000 years
    if (s < -kMax || s > kMax || n <= -1000000000 || n >= 1000000000 ||
        (s > 0 && n < 0) || (s < 0 && n > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", path, "' is not a valid Duration (seconds ", s, ", nanos ", n,
          "): nanos must be in (-1e9, 1e9) with the sign of seconds"));
    }
  } else {
    // 0001-01-01 .. 9999-12-31
    if (s < -62135596800 || s > 253402300799 || n < 0 || n >= 1000000000) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", path, "' is not a valid Timestamp (seconds ", s,
                       ", nanos ", n, ")"));
    }
  }
  return absl::OkStatus();
}

// The fields of a message type that have something to check (enums,
// identifiers, sub-messages other than maps), found once per type: every
// request's messages are walked, a SubmitBatch's hundreds of TaskSpecs too.
const std::vector<const FieldDescriptor*>& CheckedFields(const Descriptor* d) {
  // Per thread (a few gRPC threads, a few dozen request types): no lock.
  // Node-based: the caller iterates an entry while recursion adds others.
  thread_local absl::node_hash_map<const Descriptor*,
                                   std::vector<const FieldDescriptor*>>
      plans;
  auto [it, inserted] = plans.try_emplace(d);
  if (inserted) {
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      if (f->type() == FieldDescriptor::TYPE_ENUM || IsIdentifier(f) ||
          (f->type() == FieldDescriptor::TYPE_MESSAGE && !f->is_map())) {
        it->second.push_back(f);
      }
    }
  }
  return it->second;
}

absl::Status CheckId(absl::string_view value, const std::string& prefix,
                     absl::string_view name) {
  if (value.size() <= kMaxIdBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "'", prefix.empty() ? "" : absl::StrCat(prefix, "."), name, "' is ",
      value.size(), " bytes; the limit is ", kMaxIdBytes));
}

// The rules of Check for a TaskSpec, without reflection: a SubmitBatch or a
// Map message carries hundreds of them, and each reflective HasField costs
// about 300 instructions.
absl::Status CheckTaskSpec(const v1::TaskSpec& spec,
                           const std::string& prefix) {
  absl::Status s = CheckId(spec.kind(), prefix, "kind");
  if (s.ok()) s = CheckId(spec.queue(), prefix, "queue");
  if (s.ok()) s = CheckId(spec.idempotency_key(), prefix, "idempotency_key");
  auto time = [&](bool has, const Message& m, absl::string_view name) {
    if (!s.ok() || !has) return;
    s = CheckTime(m, prefix.empty() ? std::string(name)
                                    : absl::StrCat(prefix, ".", name));
  };
  time(spec.has_timeout(), spec.timeout(), "timeout");
  time(spec.has_not_before(), spec.not_before(), "not_before");
  time(spec.has_delay(), spec.delay(), "delay");
  time(spec.has_result_ttl(), spec.result_ttl(), "result_ttl");
  return s;
}

absl::Status Check(const Message& m, const std::string& prefix, int depth) {
  if (depth > 16) return absl::OkStatus();
  if (const auto* spec = dynamic_cast<const v1::TaskSpec*>(&m)) {
    return CheckTaskSpec(*spec, prefix);
  }
  if (const auto* batch = dynamic_cast<const v1::MapInputs*>(&m)) {
    // A Map stream's inputs, hundreds per message: only `kind` to check.
    for (int i = 0; i < batch->inputs_size(); ++i) {
      const std::string& kind = batch->inputs(i).kind();
      if (kind.size() > kMaxIdBytes) {
        return CheckId(
            kind, prefix.empty() ? "inputs" : absl::StrCat(prefix, ".inputs"),
            "kind");
      }
    }
    return absl::OkStatus();
  }
  const Reflection* r = m.GetReflection();
  for (const FieldDescriptor* f : CheckedFields(m.GetDescriptor())) {
    if (f->is_repeated() ? r->FieldSize(m, f) == 0 : !r->HasField(m, f)) {
      continue;
    }
    // Built only for an error message or a sub-message's prefix: this runs
    // for every field of every request.
    auto path = [&] {
      return prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
    };
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    if (f->type() == FieldDescriptor::TYPE_ENUM) {
      FORQ_RETURN_IF_ERROR(CheckEnumField(m, *f, prefix));
    } else if (IsIdentifier(f)) {
      for (int i = 0; i < n; ++i) {
        std::string scratch;
        const std::string& v =
            f->is_repeated() ? r->GetRepeatedStringReference(m, f, i, &scratch)
                             : r->GetStringReference(m, f, &scratch);
        if (v.size() > kMaxIdBytes) {
          return absl::InvalidArgumentError(
              absl::StrCat("'", path(), "' is ", v.size(),
                           " bytes; the limit is ", kMaxIdBytes));
        }
      }
    } else if (f->type() == FieldDescriptor::TYPE_MESSAGE && !f->is_map()) {
      const std::string sub_path = path();
      for (int i = 0; i < n; ++i) {
        const Message& sub = f->is_repeated() ? r->GetRepeatedMessage(m, f, i)
                                              : r->GetMessage(m, f);
        absl::Status s = CheckTime(sub, sub_path);
        if (s.ok()) s = Check(sub, sub_path, depth + 1);
        if (!s.ok()) return s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckRequestFields(const Message& m) { return Check(m, "", 0); }

absl::Status CheckEnumField(const Message& m, const FieldDescriptor& f,
                            absl::string_view prefix) {
  if (f.type() != FieldDescriptor::TYPE_ENUM) return absl::OkStatus();
  const Reflection* r = m.GetReflection();
  const int n = f.is_repeated() ? r->FieldSize(m, &f) : 1;
  for (int i = 0; i < n; ++i) {
    const int v = f.is_repeated() ? r->GetRepeatedEnumValue(m, &f, i)
                                  : r->GetEnumValue(m, &f);
    if (f.enum_type()->FindValueByNumber(v) != nullptr) continue;
    std::vector<std::string> names;
    names.reserve(f.enum_type()->value_count());
    for (int k = 0; k < f.enum_type()->value_count(); ++k) {
      names.push_back(f.enum_type()->value(k)->name());
    }
    return absl::InvalidArgumentError(
        absl::StrCat("'", prefix, prefix.empty() ? "" : ".", f.name(), "': ", v,
                     " is not a ", f.enum_type()->name(), " (one of ",
                     absl::StrJoin(names, ", "), ")"));
  }
  return absl::OkStatus();
}

absl::Status MalformedStreamMessage(absl::string_view method,
                                    absl::string_view type, int64_t n) {
  return absl::InvalidArgumentError(absl::StrCat(
      "message ", n, " of ", method, " is not a valid ", type,
      " message (bad protobuf wire format, or a string field that is not "
      "valid UTF-8); the stream is ended"));
}

}  // namespace forq::server
