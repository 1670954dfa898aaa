// Proxies of the data objects: Dict, List, Value, Array, Namespace.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#include "client/src/manager_internal.h"
#include "forq/manager.h"

namespace forq {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

// ---------------------------------------------------------------- proxies
// Each proxy method builds one ManagerCall (api/forq/v1/manager_ops.h names
// the op) and reads the fields its op fills in.

namespace {

v1::ManagerCall DictCall(const std::string& name, Op op,
                         absl::string_view key = "") {
  v1::ManagerCall c = Manager::MakeCall(v1::OBJECT_TYPE_DICT, OpName(op), name);
  c.set_key(std::string(key));
  return c;
}

v1::ManagerCall ListCall(const std::string& name, Op op) {
  return Manager::MakeCall(v1::OBJECT_TYPE_LIST, OpName(op), name);
}

}  // namespace

absl::StatusOr<std::string> Dict::Get(absl::string_view key) const {
  auto r = m_->Call(DictCall(name_, Op::kGet, key));
  if (!r.ok()) return r.status();
  return std::move(*r->mutable_value());
}

ManagerFuture Dict::GetAsync(absl::string_view key) const {
  return m_->Async(DictCall(name_, Op::kGet, key));
}

absl::Status Dict::Set(absl::string_view key, absl::string_view value) const {
  v1::ManagerCall c = DictCall(name_, Op::kSet, key);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

ManagerFuture Dict::SetAsync(absl::string_view key,
                             absl::string_view value) const {
  v1::ManagerCall c = DictCall(name_, Op::kSet, key);
  c.set_value(std::string(value));
  return m_->Async(c);
}

absl::StatusOr<bool> Dict::Delete(absl::string_view key) const {
  auto r = m_->Call(DictCall(name_, Op::kDelete, key));
  if (!r.ok()) return r.status();
  return r->found();
}

absl::StatusOr<bool> Dict::Contains(absl::string_view key) const {
  auto r = m_->Call(DictCall(name_, Op::kContains, key));
  if (!r.ok()) return r.status();
  return r->found();
}

absl::StatusOr<std::vector<std::string>> Dict::Keys() const {
  auto r = m_->Call(DictCall(name_, Op::kKeys));
  if (!r.ok()) return r.status();
  return ResultValues(*r);
}

absl::StatusOr<std::vector<std::string>> Dict::Values() const {
  auto r = m_->Call(DictCall(name_, Op::kValues));
  if (!r.ok()) return r.status();
  return ResultValues(*r);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Dict::Items()
    const {
  auto r = m_->Call(DictCall(name_, Op::kItems));
  if (!r.ok()) return r.status();
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(r->items_size());
  for (auto& kv : *r->mutable_items()) {
    out.emplace_back(std::move(*kv.mutable_key()),
                     std::move(*kv.mutable_value()));
  }
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> Dict::Copy() const {
  auto r = m_->Call(DictCall(name_, Op::kItems));
  if (!r.ok()) return r.status();
  return ResultItems(*r);
}

absl::StatusOr<std::pair<std::string, std::string>> Dict::PopItem() const {
  auto r = m_->Call(DictCall(name_, Op::kPopItem));
  if (!r.ok()) return r.status();
  if (r->items_size() != 1) return absl::InternalError("popitem: no entry");
  return std::make_pair(r->items(0).key(), r->items(0).value());
}

absl::StatusOr<int64_t> Dict::Len() const {
  auto r = m_->Call(DictCall(name_, Op::kLen));
  if (!r.ok()) return r.status();
  return r->length();
}

absl::Status Dict::Update(
    const std::map<std::string, std::string>& items) const {
  v1::ManagerCall c = DictCall(name_, Op::kUpdate);
  for (const auto& [k, v] : items) {
    v1::KeyValue* kv = c.add_items();
    kv->set_key(k);
    kv->set_value(v);
  }
  return Ok(m_->Call(c));
}

absl::Status Dict::Clear() const {
  return Ok(m_->Call(DictCall(name_, Op::kClear)));
}

absl::Status Dict::CompareAndSet(absl::string_view key,
                                 std::optional<std::string> expected,
                                 absl::string_view value) const {
  v1::ManagerCall c = DictCall(name_, Op::kCompareAndSet, key);
  c.set_value(std::string(value));
  if (expected) {
    c.set_expected(*expected);
  } else {
    c.set_expect_absent(true);
  }
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> Dict::SetIfAbsent(absl::string_view key,
                                              absl::string_view value) const {
  v1::ManagerCall c = DictCall(name_, Op::kSetIfAbsent, key);
  c.set_value(std::string(value));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<int64_t> List::Append(absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kAppend);
  c.set_value(std::string(value));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<int64_t> List::Extend(
    const std::vector<std::string>& values) const {
  v1::ManagerCall c = ListCall(name_, Op::kExtend);
  for (const auto& v : values) c.add_values(v);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<std::string> List::Get(int64_t index) const {
  v1::ManagerCall c = ListCall(name_, Op::kGet);
  c.set_index(index);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status List::Set(int64_t index, absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kSet);
  c.set_index(index);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> List::Pop(std::optional<int64_t> index) const {
  v1::ManagerCall c = ListCall(name_, Op::kPop);
  if (index) c.set_index(*index);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status List::Insert(int64_t index, absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kInsert);
  c.set_index(index);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::Status List::Remove(absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kRemove);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::StatusOr<int64_t> List::Len() const {
  auto r = m_->Call(ListCall(name_, Op::kLen));
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<std::vector<std::string>> List::Slice(
    std::optional<int64_t> start, std::optional<int64_t> stop) const {
  v1::ManagerCall c = ListCall(name_, Op::kSlice);
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return ResultValues(*r);
}

absl::Status List::Clear() const {
  return Ok(m_->Call(ListCall(name_, Op::kClear)));
}

absl::StatusOr<std::string> List::Add(int64_t index,
                                      absl::string_view delta) const {
  v1::ManagerCall c = ListCall(name_, Op::kAdd);
  c.set_index(index);
  c.set_delta(std::string(delta));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<int64_t> List::Index(absl::string_view value,
                                    std::optional<int64_t> start,
                                    std::optional<int64_t> stop) const {
  v1::ManagerCall c = ListCall(name_, Op::kIndex);
  c.set_value(std::string(value));
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->count();
}

absl::StatusOr<int64_t> List::Count(absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kCount);
  c.set_value(std::string(value));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->count();
}

absl::StatusOr<bool> List::Contains(absl::string_view value) const {
  v1::ManagerCall c = ListCall(name_, Op::kContains);
  c.set_value(std::string(value));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->found();
}

absl::Status List::Reverse() const {
  return Ok(m_->Call(ListCall(name_, Op::kReverse)));
}

absl::Status List::Sort(absl::string_view key, bool reverse) const {
  v1::ManagerCall c = ListCall(name_, Op::kSort);
  c.set_key(std::string(key));
  c.set_reverse(reverse);
  return Ok(m_->Call(c));
}

absl::StatusOr<int64_t> List::Repeat(int64_t n) const {
  v1::ManagerCall c = ListCall(name_, Op::kRepeat);
  c.set_n(static_cast<int32_t>(std::clamp<int64_t>(n, -1, INT32_MAX)));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<int64_t> List::SetSlice(
    std::optional<int64_t> start, std::optional<int64_t> stop,
    const std::vector<std::string>& values) const {
  v1::ManagerCall c = ListCall(name_, Op::kSetSlice);
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  for (const auto& v : values) c.add_values(v);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

absl::StatusOr<int64_t> List::DeleteSlice(std::optional<int64_t> start,
                                          std::optional<int64_t> stop) const {
  v1::ManagerCall c = ListCall(name_, Op::kDeleteSlice);
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->length();
}

// ---------------------------------------------------------------- Value

namespace {
v1::ManagerCall ValueCall(const std::string& name, Op op,
                          const std::string& typecode) {
  v1::ManagerCall c =
      Manager::MakeCall(v1::OBJECT_TYPE_VALUE, OpName(op), name);
  c.set_typecode(typecode);
  return c;
}
}  // namespace

absl::StatusOr<std::string> Value::Get() const {
  auto r = m_->Call(ValueCall(name_, Op::kGet, typecode_));
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Value::Set(absl::string_view value) const {
  v1::ManagerCall c = ValueCall(name_, Op::kSet, typecode_);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> Value::Add(absl::string_view delta) const {
  v1::ManagerCall c = ValueCall(name_, Op::kAdd, typecode_);
  c.set_delta(std::string(delta));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Value::CompareAndSet(absl::string_view expected,
                                  absl::string_view value) const {
  v1::ManagerCall c = ValueCall(name_, Op::kCompareAndSet, typecode_);
  c.set_expected(std::string(expected));
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

// ---------------------------------------------------------------- Array

v1::ManagerCall Array::Base(absl::string_view op) const {
  v1::ManagerCall c = Manager::MakeCall(v1::OBJECT_TYPE_ARRAY, op, name_);
  c.set_length(length_);
  c.set_typecode(typecode_);
  // Creation values ride along; an existing array ignores them only if it
  // already exists (the server creates from them at first use).
  for (const auto& v : initial_) c.add_values(v);
  return c;
}

absl::StatusOr<std::string> Array::Get(int64_t index) const {
  v1::ManagerCall c = Base(OpName(Op::kGet));
  c.set_index(index);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Array::Set(int64_t index, absl::string_view value) const {
  v1::ManagerCall c = Base(OpName(Op::kSet));
  c.set_index(index);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::StatusOr<std::string> Array::Add(int64_t index,
                                       absl::string_view delta) const {
  v1::ManagerCall c = Base(OpName(Op::kAdd));
  c.set_index(index);
  c.set_delta(std::string(delta));
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return r->value();
}

absl::StatusOr<std::vector<std::string>> Array::Slice(
    std::optional<int64_t> start, std::optional<int64_t> stop) const {
  v1::ManagerCall c = Base(OpName(Op::kSlice));
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  auto r = m_->Call(c);
  if (!r.ok()) return r.status();
  return ResultValues(*r);
}

absl::StatusOr<int64_t> Array::Len() const {
  auto r = m_->Call(Base(OpName(Op::kLen)));
  if (!r.ok()) return r.status();
  return r->length();
}

absl::Status Array::SetSlice(std::optional<int64_t> start,
                             std::optional<int64_t> stop,
                             const std::vector<std::string>& values) const {
  v1::ManagerCall c = Base(OpName(Op::kSetSlice));
  c.clear_values();
  if (start) c.set_start(*start);
  if (stop) c.set_stop(*stop);
  for (const auto& v : values) c.add_values(v);
  return Ok(m_->Call(c));
}

// ---------------------------------------------------------------- Namespace

namespace {
v1::ManagerCall NsCall(const std::string& name, Op op,
                       absl::string_view attr = "") {
  v1::ManagerCall c =
      Manager::MakeCall(v1::OBJECT_TYPE_NAMESPACE, OpName(op), name);
  c.set_key(std::string(attr));
  return c;
}
}  // namespace

absl::StatusOr<std::string> Namespace::Get(absl::string_view attr) const {
  auto r = m_->Call(NsCall(name_, Op::kGet, attr));
  if (!r.ok()) return r.status();
  return r->value();
}

absl::Status Namespace::Set(absl::string_view attr,
                            absl::string_view value) const {
  v1::ManagerCall c = NsCall(name_, Op::kSet, attr);
  c.set_value(std::string(value));
  return Ok(m_->Call(c));
}

absl::Status Namespace::Delete(absl::string_view attr) const {
  return Ok(m_->Call(NsCall(name_, Op::kDelete, attr)));
}

absl::StatusOr<std::map<std::string, std::string>> Namespace::List() const {
  auto r = m_->Call(NsCall(name_, Op::kItems));
  if (!r.ok()) return r.status();
  return ResultItems(*r);
}

}  // namespace forq
