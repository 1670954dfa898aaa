// Dict, namespace, list, value and array operations.
#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

#include "server/manager/object_manager.h"
#include "server/manager/object_util.h"

namespace forq::server {

using namespace manager_internal;  // NOLINT(google-build-using-namespace):
                                   // internal helpers

absl::StatusOr<ObjectManager::Reply> ObjectManager::MapOpLocked(
    const std::string& name, Object& o, Request& req, Batch& b) {
  const bool ns = o.type == ManagerType::kNamespace;
  const absl::string_view what = ns ? "attribute" : "key";
  Reply r;
  auto need_key = [&]() { return ValidateKey(what, req.key); };
  auto room = [&](size_t more) -> absl::Status {
    if (o.map.size() + more > options_.max_entries) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "'", name, "' is full (", options_.max_entries, " entries)"));
    }
    return absl::OkStatus();
  };
  switch (req.op) {
    case ManagerOp::kGet: {
      FORQ_RETURN_IF_ERROR(need_key());
      const std::string* v = o.map.Find(req.key);
      if (v == nullptr) {
        return absl::NotFoundError(
            absl::StrCat(ns ? "namespace '" : "dict '", name, "' has no ", what,
                         " '", absl::CHexEscape(req.key), "'"));
      }
      r.value = *v;
      r.found = true;
      break;
    }
    case ManagerOp::kSet: {
      FORQ_RETURN_IF_ERROR(need_key());
      if (o.map.count(req.key) == 0) FORQ_RETURN_IF_ERROR(room(1));
      o.map.Set(req.key, req.value);
      MarkKeyLocked(b, name, req.key);
      TouchLocked(name, o, "set", req.key, req.value, b);
      break;
    }
    case ManagerOp::kDelete: {
      FORQ_RETURN_IF_ERROR(need_key());
      std::optional<std::string> old = o.map.Erase(req.key);
      if (!old) {
        if (ns) {
          return absl::NotFoundError(
              absl::StrCat("namespace '", name, "' has no attribute '",
                           absl::CHexEscape(req.key), "'"));
        }
        break;
      }
      r.found = true;
      r.value = *std::move(old);
      MarkKeyLocked(b, name, req.key);
      TouchLocked(name, o, "delete", req.key, "", b);
      break;
    }
    case ManagerOp::kContains:
      FORQ_RETURN_IF_ERROR(need_key());
      r.found = o.map.count(req.key) != 0;
      break;
    case ManagerOp::kKeys:
      r.values.reserve(o.map.size());
      o.map.ForEach([&r](const std::string& k, const std::string&) {
        r.values.push_back(k);
      });
      break;
    case ManagerOp::kValues:
      r.values.reserve(o.map.size());
      o.map.ForEach([&r](const std::string&, const std::string& v) {
        r.values.push_back(v);
      });
      break;
    case ManagerOp::kItems:
      r.items.reserve(o.map.size());
      o.map.ForEach([&r](const std::string& k, const std::string& v) {
        r.items.emplace_back(k, v);
      });
      break;
    case ManagerOp::kLen:
      break;
    case ManagerOp::kUpdate: {
      size_t fresh = 0;
      for (const auto& [k, v] : req.items) {
        FORQ_RETURN_IF_ERROR(ValidateKey(what, k));
        fresh += o.map.count(k) == 0;
      }
      FORQ_RETURN_IF_ERROR(room(fresh));
      for (auto& [k, v] : req.items) {
        MarkKeyLocked(b, name, k);
        o.map.Set(k, std::move(v));
      }
      TouchLocked(name, o, "update", "", "", b);
      break;
    }
    case ManagerOp::kClear:
      o.map.ForEach([&](const std::string& k, const std::string&) {
        MarkKeyLocked(b, name, k);
      });
      o.map.Clear();
      TouchLocked(name, o, "clear", "", "", b);
      break;
    case ManagerOp::kPopItem: {
      const std::string* last = o.map.LastKey();
      if (last == nullptr) {
        return absl::NotFoundError(
            absl::StrCat("popitem(): dict '", name, "' is empty"));
      }
      std::string key = *last;
      std::optional<std::string> v = o.map.Erase(key);
      MarkKeyLocked(b, name, key);
      TouchLocked(name, o, "popitem", key, "", b);
      r.items.emplace_back(std::move(key), *std::move(v));
      break;
    }
    case ManagerOp::kCompareAndSet: {
      FORQ_RETURN_IF_ERROR(need_key());
      const std::string* v = o.map.Find(req.key);
      if (req.expect_absent ? v != nullptr
                            : (v == nullptr || *v != req.expected)) {
        return absl::AbortedError(absl::StrCat(
            "compare-and-set of '", name, "'[", absl::CHexEscape(req.key),
            "] failed: ", v == nullptr ? "key is absent" : "value differs"));
      }
      if (v == nullptr) FORQ_RETURN_IF_ERROR(room(1));
      o.map.Set(req.key, req.value);
      r.value = req.value;
      MarkKeyLocked(b, name, req.key);
      TouchLocked(name, o, "compare_and_set", req.key, req.value, b);
      break;
    }
    case ManagerOp::kSetIfAbsent: {
      FORQ_RETURN_IF_ERROR(need_key());
      if (const std::string* v = o.map.Find(req.key)) {
        r.found = true;
        r.value = *v;
        break;
      }
      FORQ_RETURN_IF_ERROR(room(1));
      o.map.Set(req.key, req.value);
      r.value = req.value;
      MarkKeyLocked(b, name, req.key);
      TouchLocked(name, o, "set", req.key, req.value, b);
      break;
    }
    default:
      return Unsupported(o.type, req.op);
  }
  r.length = static_cast<int64_t>(o.map.size());
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::ListOpLocked(
    const std::string& name, Object& o, Request& req, Batch& b) {
  Reply r;
  auto room = [&](size_t more) -> absl::Status {
    if (o.list.size() + more > options_.max_entries) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "list '", name, "' is full (", options_.max_entries, " items)"));
    }
    return absl::OkStatus();
  };
  auto need_index = [&]() -> absl::Status {
    if (!req.has_index) {
      return absl::InvalidArgumentError(absl::StrCat(
          "list ", worker::ManagerOpName(req.op), " needs an index"));
    }
    return absl::OkStatus();
  };
  switch (req.op) {
    case ManagerOp::kAppend:
      FORQ_RETURN_IF_ERROR(room(1));
      o.list.push_back(req.value);
      o.seq_bytes += req.value.size();
      MarkPosLocked(b, name, o.head + static_cast<int64_t>(o.list.size()) - 1);
      TouchLocked(name, o, "append", "", req.value, b);
      break;
    case ManagerOp::kExtend:
      FORQ_RETURN_IF_ERROR(room(req.values.size()));
      MarkFromLocked(b, name, o.head + static_cast<int64_t>(o.list.size()));
      for (auto& v : req.values) {
        o.seq_bytes += v.size();
        o.list.push_back(std::move(v));
      }
      TouchLocked(name, o, "extend", "", "", b);
      break;
    case ManagerOp::kGet: {
      FORQ_RETURN_IF_ERROR(need_index());
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, o.list.size(), "list"));
      r.value = o.list[i];
      break;
    }
    case ManagerOp::kSet: {
      FORQ_RETURN_IF_ERROR(need_index());
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, o.list.size(), "list"));
      o.seq_bytes += req.value.size() - o.list[i].size();
      o.list[i] = req.value;
      MarkPosLocked(b, name, o.head + static_cast<int64_t>(i));
      TouchLocked(name, o, "set", absl::StrCat(i), req.value, b);
      break;
    }
    case ManagerOp::kPop: {
      if (o.list.empty()) {
        return absl::OutOfRangeError(
            absl::StrCat("pop from empty list '", name, "'"));
      }
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.has_index ? req.index : -1,
                                            o.list.size(), "list"));
      r.value = std::move(o.list[i]);
      o.seq_bytes -= r.value.size();
      o.list.erase(o.list.begin() + static_cast<ptrdiff_t>(i));
      if (i == 0) {
        // pop(0) advances the head: one chunk changes, not every one.
        MarkPosLocked(b, name, o.head);
        ++o.head;
      } else {
        MarkFromLocked(b, name, o.head + static_cast<int64_t>(i));
      }
      TouchLocked(name, o, "pop", absl::StrCat(i), r.value, b);
      break;
    }
    case ManagerOp::kInsert: {
      FORQ_RETURN_IF_ERROR(need_index());
      FORQ_RETURN_IF_ERROR(room(1));
      // Python's insert clamps instead of raising.
      const auto n = static_cast<int64_t>(o.list.size());
      int64_t i = req.index < 0 ? req.index + n : req.index;
      i = std::clamp<int64_t>(i, 0, n);
      o.list.insert(o.list.begin() + i, req.value);
      o.seq_bytes += req.value.size();
      if (i == 0) {
        --o.head;
        MarkPosLocked(b, name, o.head);
      } else {
        MarkFromLocked(b, name, o.head + i);
      }
      TouchLocked(name, o, "insert", absl::StrCat(i), req.value, b);
      break;
    }
    case ManagerOp::kRemove: {
      auto it = std::find(o.list.begin(), o.list.end(), req.value);
      if (it == o.list.end()) {
        return absl::NotFoundError(
            absl::StrCat("list '", name, "' has no such item"));
      }
      MarkFromLocked(b, name, o.head + (it - o.list.begin()));
      o.seq_bytes -= it->size();
      o.list.erase(it);
      TouchLocked(name, o, "remove", "", req.value, b);
      break;
    }
    case ManagerOp::kLen:
      break;
    case ManagerOp::kSlice: {
      auto [start, stop] = SliceBounds(req, o.list.size());
      r.values.assign(o.list.begin() + start, o.list.begin() + stop);
      break;
    }
    case ManagerOp::kClear:
      o.list.clear();
      o.seq_bytes = 0;
      TouchLocked(name, o, "clear", "", "", b);
      break;
    case ManagerOp::kAdd: {
      FORQ_RETURN_IF_ERROR(need_index());
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, o.list.size(), "list"));
      FORQ_ASSIGN_OR_RETURN(r.value, AddNumbers(o.list[i], req.delta));
      o.seq_bytes += r.value.size() - o.list[i].size();
      o.list[i] = r.value;
      MarkPosLocked(b, name, o.head + static_cast<int64_t>(i));
      TouchLocked(name, o, "add", absl::StrCat(i), r.value, b);
      break;
    }
    case ManagerOp::kIndex: {
      auto [start, stop] = SliceBounds(req, o.list.size());
      auto first = o.list.begin() + static_cast<ptrdiff_t>(start);
      auto last = o.list.begin() + static_cast<ptrdiff_t>(stop);
      auto it = std::find(first, last, req.value);
      if (it == last) {
        return absl::NotFoundError(
            absl::StrCat("list '", name, "' has no such item"));
      }
      r.count = it - o.list.begin();
      break;
    }
    case ManagerOp::kCount:
      r.count = std::count(o.list.begin(), o.list.end(), req.value);
      break;
    case ManagerOp::kContains:
      r.found =
          std::find(o.list.begin(), o.list.end(), req.value) != o.list.end();
      break;
    case ManagerOp::kReverse:
      std::reverse(o.list.begin(), o.list.end());
      TouchLocked(name, o, "reverse", "", "", b);
      break;
    case ManagerOp::kSort: {
      FORQ_RETURN_IF_ERROR(SortItems(o.list, req.key, req.reverse));
      TouchLocked(name, o, "sort", req.key, "", b);
      break;
    }
    case ManagerOp::kRepeat: {
      const size_t n0 = o.list.size();
      if (req.n <= 0 || n0 == 0) {
        o.list.clear();
        o.seq_bytes = 0;
      } else {
        if (static_cast<uint64_t>(req.n) > options_.max_entries ||
            n0 * static_cast<size_t>(req.n) > options_.max_entries) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "list '", name, "' is full (", options_.max_entries, " items)"));
        }
        o.list.reserve(n0 * static_cast<size_t>(req.n));
        for (int64_t k = 1; k < req.n; ++k) {
          for (size_t i = 0; i < n0; ++i) o.list.push_back(o.list[i]);
        }
        o.seq_bytes *= static_cast<size_t>(req.n);
        MarkFromLocked(b, name, o.head + static_cast<int64_t>(n0));
      }
      TouchLocked(name, o, "repeat", absl::StrCat(req.n), "", b);
      break;
    }
    case ManagerOp::kSetSlice: {
      auto [start, stop] = SliceBounds(req, o.list.size());
      const size_t removed = stop - start;
      if (req.values.size() > removed) {
        FORQ_RETURN_IF_ERROR(room(req.values.size() - removed));
      }
      auto first = o.list.begin() + static_cast<ptrdiff_t>(start);
      for (auto it = first; it != first + static_cast<ptrdiff_t>(removed);
           ++it) {
        o.seq_bytes -= it->size();
      }
      for (const auto& v : req.values) o.seq_bytes += v.size();
      MarkFromLocked(b, name, o.head + static_cast<int64_t>(start));
      o.list.erase(first, first + static_cast<ptrdiff_t>(removed));
      o.list.insert(o.list.begin() + static_cast<ptrdiff_t>(start),
                    std::make_move_iterator(req.values.begin()),
                    std::make_move_iterator(req.values.end()));
      TouchLocked(name, o, "set_slice", absl::StrCat(start, ":", stop), "", b);
      break;
    }
    case ManagerOp::kDeleteSlice: {
      auto [start, stop] = SliceBounds(req, o.list.size());
      auto first = o.list.begin() + static_cast<ptrdiff_t>(start);
      for (auto it = first; it != first + static_cast<ptrdiff_t>(stop - start);
           ++it) {
        o.seq_bytes -= it->size();
      }
      MarkFromLocked(b, name, o.head + static_cast<int64_t>(start));
      o.list.erase(first, first + static_cast<ptrdiff_t>(stop - start));
      TouchLocked(name, o, "delete_slice", absl::StrCat(start, ":", stop), "",
                  b);
      break;
    }
    default:
      return Unsupported(o.type, req.op);
  }
  r.length = static_cast<int64_t>(o.list.size());
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::ValueOpLocked(
    const std::string& name, Object& o, Request& req, Batch& b) {
  if (!req.typecode.empty() &&
      (o.typecode == 0 || req.typecode != std::string(1, o.typecode))) {
    return absl::FailedPreconditionError(absl::StrCat(
        "value '", name, "' has ",
        o.typecode == 0
            ? std::string("no typecode")
            : absl::StrCat("typecode '", std::string(1, o.typecode), "'")));
  }
  // A typed value holds a number of its typecode, in canonical text.
  auto typed = [&o](absl::string_view text) -> absl::StatusOr<std::string> {
    if (o.typecode == 0) return std::string(text);
    FORQ_ASSIGN_OR_RETURN(Typecode tc,
                          ParseTypecode(std::string(1, o.typecode)));
    if (absl::StripAsciiWhitespace(text).empty()) {
      return absl::InvalidArgumentError("a typed value needs a number");
    }
    FORQ_ASSIGN_OR_RETURN(Number n, ParseNumber(text, "value"));
    FORQ_RETURN_IF_ERROR(CheckTypecode(tc, n, "value"));
    if (!tc.is_float) return absl::StrCat(n.i);
    double d = n.is_int ? static_cast<double>(n.i) : n.d;
    if (tc.single) d = static_cast<float>(d);
    return FormatDouble(d);
  };
  Reply r;
  switch (req.op) {
    case ManagerOp::kGet:
      break;
    case ManagerOp::kSet: {
      FORQ_ASSIGN_OR_RETURN(o.value, typed(req.value));
      TouchLocked(name, o, "set", "", o.value, b);
      break;
    }
    case ManagerOp::kAdd: {
      FORQ_ASSIGN_OR_RETURN(std::string v, AddNumbers(o.value, req.delta));
      FORQ_ASSIGN_OR_RETURN(o.value, typed(v));
      TouchLocked(name, o, "add", "", o.value, b);
      break;
    }
    case ManagerOp::kCompareAndSet: {
      if (o.value != req.expected) {
        return absl::AbortedError(absl::StrCat(
            "compare-and-set of value '", name, "' failed: value differs"));
      }
      FORQ_ASSIGN_OR_RETURN(o.value, typed(req.value));
      TouchLocked(name, o, "compare_and_set", "", o.value, b);
      break;
    }
    default:
      return Unsupported(o.type, req.op);
  }
  r.value = o.value;
  return r;
}

absl::StatusOr<ObjectManager::Reply> ObjectManager::ArrayOpLocked(
    const std::string& name, Object& o, Request& req, Batch& b) {
  const size_t size =
      !IsFloatTypecode(o.typecode) ? o.ints.size() : o.doubles.size();
  if (req.length != 0 && static_cast<size_t>(req.length) != size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "array '", name, "' has length ", size, ", not ", req.length));
  }
  if (!req.typecode.empty() && req.typecode != std::string(1, o.typecode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "array '", name, "' has typecode '", std::string(1, o.typecode), "'"));
  }
  auto text = [&o](size_t i) {
    return !IsFloatTypecode(o.typecode) ? absl::StrCat(o.ints[i])
                                        : FormatDouble(o.doubles[i]);
  };
  FORQ_ASSIGN_OR_RETURN(const Typecode tc,
                        ParseTypecode(std::string(1, o.typecode)));
  auto store = [&o, &tc](size_t i, const Number& n) -> absl::Status {
    FORQ_RETURN_IF_ERROR(CheckTypecode(tc, n, "array element"));
    if (!tc.is_float) {
      o.ints[i] = n.i;
    } else {
      o.doubles[i] = n.is_int ? static_cast<double>(n.i) : n.d;
      if (tc.single) o.doubles[i] = static_cast<float>(o.doubles[i]);
    }
    return absl::OkStatus();
  };
  Reply r;
  r.typecode = std::string(1, o.typecode);
  r.length = static_cast<int64_t>(size);
  switch (req.op) {
    case ManagerOp::kGet: {
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, size, "array"));
      r.value = text(i);
      break;
    }
    case ManagerOp::kSet: {
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, size, "array"));
      if (absl::StripAsciiWhitespace(req.value).empty()) {
        return absl::InvalidArgumentError("array set needs a value");
      }
      FORQ_ASSIGN_OR_RETURN(Number n, ParseNumber(req.value, "value"));
      FORQ_RETURN_IF_ERROR(store(i, n));
      r.value = text(i);
      MarkPosLocked(b, name, static_cast<int64_t>(i));
      TouchLocked(name, o, "set", absl::StrCat(i), r.value, b);
      break;
    }
    case ManagerOp::kAdd: {
      FORQ_ASSIGN_OR_RETURN(size_t i, Index(req.index, size, "array"));
      FORQ_ASSIGN_OR_RETURN(std::string sum, AddNumbers(text(i), req.delta));
      FORQ_ASSIGN_OR_RETURN(Number n, ParseNumber(sum, "sum"));
      FORQ_RETURN_IF_ERROR(store(i, n));
      r.value = text(i);
      MarkPosLocked(b, name, static_cast<int64_t>(i));
      TouchLocked(name, o, "add", absl::StrCat(i), r.value, b);
      break;
    }
    case ManagerOp::kSlice: {
      auto [start, stop] = SliceBounds(req, size);
      for (size_t i = start; i < stop; ++i) r.values.push_back(text(i));
      break;
    }
    case ManagerOp::kLen:
      break;
    case ManagerOp::kSetSlice: {
      auto [start, stop] = SliceBounds(req, size);
      if (req.values.size() != stop - start) {
        return absl::InvalidArgumentError(
            absl::StrCat("array '", name, "': slice of ", stop - start,
                         " takes as many ", "values, not ", req.values.size()));
      }
      std::vector<Number> nums;
      nums.reserve(req.values.size());
      for (const std::string& v : req.values) {
        FORQ_ASSIGN_OR_RETURN(Number n, ParseNumber(v, "value"));
        FORQ_RETURN_IF_ERROR(CheckTypecode(tc, n, "array element"));
        nums.push_back(n);
      }
      // Checked first, so the slice changes whole or not at all.
      for (size_t i = 0; i < nums.size(); ++i) {
        FORQ_RETURN_IF_ERROR(store(start + i, nums[i]));
      }
      for (size_t i = start; i < stop; ++i) {
        MarkPosLocked(b, name, static_cast<int64_t>(i));
      }
      TouchLocked(name, o, "set_slice", absl::StrCat(start, ":", stop), "", b);
      break;
    }
    default:
      return Unsupported(o.type, req.op);
  }
  return r;
}

// ------------------------------------------------------------ references

absl::Status ObjectManager::CheckRefsLocked(const Request& req) {
  const v1::ManagerOpSpec* spec = v1::FindManagerOp(req.type, req.op);
  if (spec == nullptr || !spec->mutates()) return absl::OkStatus();
  std::vector<const std::string*> values = {&req.value};
  for (const std::string& v : req.values) values.push_back(&v);
  for (const auto& [k, v] : req.items) values.push_back(&v);
  for (const std::string* v : values) {
    worker::ManagerType type{};
    std::string_view view;
    if (!v1::ParseManagerRef(*v, &type, &view)) continue;
    const std::string name(view);
    auto it = objects_.find(name);
    if (it == objects_.end()) {
      return absl::NotFoundError(absl::StrCat(
          "the value refers to ", worker::ManagerTypeName(type), " '", name,
          "', which does not exist (use it once to create it)"));
    }
    if (it->second.type != type) {
      return absl::FailedPreconditionError(
          absl::StrCat("the value refers to ", worker::ManagerTypeName(type),
                       " '", name, "', but '", name, "' is a ",
                       worker::ManagerTypeName(it->second.type)));
    }
  }
  return absl::OkStatus();
}

std::string ObjectManager::ReferrerLocked(const std::string& name) {
  auto refers = [&](const std::string& v) {
    worker::ManagerType type{};
    std::string_view to;
    return v.size() > v1::kManagerRefPrefix.size() &&
           v1::ParseManagerRef(v, &type, &to) && to == name;
  };
  for (const auto& [other, o] : objects_) {
    bool found = refers(o.value);
    o.map.ForEach([&](const std::string&, const std::string& v) {
      found = found || refers(v);
    });
    for (const std::string& v : o.list) found = found || refers(v);
    for (const std::string& v : o.items) found = found || refers(v);
    for (const auto& inbox : o.inbox) {
      for (const std::string& v : inbox) found = found || refers(v);
    }
    if (found) {
      return absl::StrCat(worker::ManagerTypeName(o.type), " '", other, "'");
    }
  }
  return "";
}

}  // namespace forq::server
