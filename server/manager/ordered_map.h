// An insertion-ordered string map, as Python's dict: iteration follows
// first insertion, re-setting a key keeps its place, popitem takes the last.
// Used for Manager dicts and namespaces. Internal to server/manager.
#ifndef FORQ_SERVER_MANAGER_ORDERED_MAP_H_
#define FORQ_SERVER_MANAGER_ORDERED_MAP_H_

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

namespace forq::server {

// Thread-compatible. Lookups are O(1), insert/erase O(log n) (the order
// index). Tracks the bytes of its keys and values for the Manager's limits.
class OrderedMap {
 public:
  size_t size() const { return by_key_.size(); }
  bool empty() const { return by_key_.empty(); }
  // Key plus value bytes of every entry.
  size_t bytes() const { return bytes_; }
  size_t count(const std::string& key) const { return by_key_.count(key); }

  const std::string* Find(const std::string& key) const {
    auto it = by_key_.find(key);
    return it == by_key_.end() ? nullptr : &it->second.value;
  }

  // Sets `key`; returns true if it was new (appended at the end).
  bool Set(const std::string& key, std::string value) {
    auto [it, fresh] = by_key_.try_emplace(key);
    if (fresh) {
      it->second.seq = next_seq_++;
      order_.emplace(it->second.seq, &it->first);
      bytes_ += key.size();
    } else {
      bytes_ -= it->second.value.size();
    }
    bytes_ += value.size();
    it->second.value = std::move(value);
    return fresh;
  }

  // Removes `key`; returns its value if it was present.
  std::optional<std::string> Erase(const std::string& key) {
    auto it = by_key_.find(key);
    if (it == by_key_.end()) return std::nullopt;
    std::string value = std::move(it->second.value);
    bytes_ -= key.size() + value.size();
    order_.erase(it->second.seq);
    by_key_.erase(it);
    return value;
  }

  // The most recently inserted key, or nullptr when empty.
  const std::string* LastKey() const {
    return order_.empty() ? nullptr : order_.rbegin()->second;
  }

  // The order number of `key` (0 if absent) and of the next new key.
  uint64_t Seq(const std::string& key) const {
    auto it = by_key_.find(key);
    return it == by_key_.end() ? 0 : it->second.seq;
  }
  uint64_t next_seq() const { return next_seq_; }
  void set_next_seq(uint64_t n) { next_seq_ = std::max(next_seq_, n); }
  // Inserts a new key at order number `seq` (recovery). False if the key
  // or the number is taken.
  bool Restore(const std::string& key, std::string value, uint64_t seq) {
    if (seq == 0 || order_.count(seq) != 0) return false;
    auto [it, fresh] = by_key_.try_emplace(key);
    if (!fresh) return false;
    it->second.seq = seq;
    bytes_ += key.size() + value.size();
    it->second.value = std::move(value);
    order_.emplace(seq, &it->first);
    next_seq_ = std::max(next_seq_, seq + 1);
    return true;
  }

  void Clear() {
    by_key_.clear();
    order_.clear();
    bytes_ = 0;
  }

  // Calls f(key, value) in insertion order.
  template <typename F>
  void ForEach(F f) const {
    for (const auto& [seq, key] : order_) f(*key, by_key_.at(*key).value);
  }

 private:
  struct Entry {
    uint64_t seq = 0;
    std::string value;
  };
  // Node-based: the key strings order_ points to never move.
  std::unordered_map<std::string, Entry> by_key_;
  std::map<uint64_t, const std::string*> order_;
  uint64_t next_seq_ = 1;
  size_t bytes_ = 0;
};

}  // namespace forq::server

#endif  // FORQ_SERVER_MANAGER_ORDERED_MAP_H_
