// Map and MapUnordered: Python's imap / imap_unordered over forq's Map
// stream. Inputs are pulled lazily from any range or generator, at most
// `window` of them are in flight at once, and results come back as an input
// range of MapItem, in input order (Map) or as they complete (MapUnordered).
//
//   for (const forq::MapItem& r : client.Map("sha256", inputs)) {
//     if (r.ok()) use(r.index, r.result); else report(r.index, r.status);
//   }
#ifndef FORQ_CLIENT_MAP_H_
#define FORQ_CLIENT_MAP_H_

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

#include "forq/v1/task.pb.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace forq {

// Inputs in flight when MapOptions::window is 0. (A client that sends
// window 0, e.g. over REST, gets the server's default, 256.)
inline constexpr int kDefaultMapWindow = 1024;
// Input payload bytes in flight when MapOptions::window_bytes is 0.
inline constexpr int64_t kDefaultMapWindowBytes = int64_t{32} << 20;
// Largest window the server accepts.
inline constexpr int kMaxMapWindow = 10'000;

// Options of one Map stream; zero values take the defaults.
struct MapOptions {
  std::string queue;
  int priority = 0;
  int max_attempts = 0;
  // Hard timeout per attempt of each task.
  absl::Duration timeout = absl::ZeroDuration();
  // Inputs submitted whose results were not yet read, at most; 0 =
  // kDefaultMapWindow. Bounds memory and load in client and server alike.
  // Must be in [0, kMaxMapWindow] (else the stream ends InvalidArgument).
  int window = 0;
  // Besides `window`: payload bytes of those inputs, at most; 0 =
  // kDefaultMapWindowBytes. Inputs of up to 1 KiB count against `window`
  // only; an input that alone exceeds it is sent when nothing else is in
  // flight. Must not be negative.
  int64_t window_bytes = 0;
  // End the stream after the first item that did not succeed: that item is
  // still delivered, then iteration stops and status() is Aborted.
  bool fail_fast = false;
  // Breaking out of the loop or destroying the stream before its end
  // cancels the inputs not yet started (CANCELLED, like Pool.terminate());
  // true keeps them queued, to run with nobody reading their results.
  bool keep_queued_on_cancel = false;
};

// One input of a Map: the payload, and optionally a kind that overrides the
// stream's kind for this input. Implicitly built from strings so ranges of
// std::string / absl::string_view / const char* work as inputs.
struct MapInput {
  MapInput() = default;
  MapInput(std::string p) : payload(std::move(p)) {}  // NOLINT: implicit
  MapInput(absl::string_view p) : payload(p) {}       // NOLINT: implicit
  MapInput(const char* p) : payload(p) {}             // NOLINT: implicit
  MapInput(std::string k, std::string p)
      : payload(std::move(p)), kind(std::move(k)) {}

  std::string payload;
  // Empty: the stream's kind.
  std::string kind;
};

// The outcome of one input.
struct MapItem {
  // Zero-based position of the input in the input sequence.
  uint64_t index = 0;
  // Empty when the server could not create the task (status says why).
  std::string task_id;
  v1::TaskState state = v1::TASK_STATE_UNSPECIFIED;
  // OK iff state == SUCCEEDED; otherwise the task's error code and message
  // (Cancelled for CANCELLED tasks).
  absl::Status status;
  // The handler's output (empty unless ok()).
  std::string result;
  // The server's classification of the failure (reason, signal).
  v1::TaskError error;
  int attempt = 0;

  bool ok() const { return status.ok(); }
};

namespace map_internal {

template <typename R, typename = void>
struct IsRange : std::false_type {};
template <typename R>
struct IsRange<R, std::void_t<decltype(std::begin(std::declval<R&>())),
                              decltype(std::end(std::declval<R&>()))>>
    : std::true_type {};

template <typename F, typename = void>
struct IsGenerator : std::false_type {};
template <typename F>
struct IsGenerator<F, std::enable_if_t<std::is_invocable_v<F&>>>
    : std::is_convertible<std::invoke_result_t<F&>, std::optional<MapInput>> {};

}  // namespace map_internal

// Where a Map pulls its inputs from, one at a time and only when the window
// has room: a range (vector, list, any begin/end pair), an iterator pair, or
// a generator returning std::optional<...> (nullopt ends the inputs).
//
// An lvalue range is borrowed and must outlive the stream; an rvalue range is
// moved into the source. Inputs are pulled on the thread that iterates the
// stream, so a generator needs no locking of its own.
class MapSource {
 public:
  using Next = std::function<std::optional<MapInput>()>;

  // No inputs.
  MapSource() = default;

  // From a generator: called until it returns std::nullopt.
  template <typename F, std::enable_if_t<
                            map_internal::IsGenerator<std::decay_t<F>>::value &&
                                !map_internal::IsRange<std::decay_t<F>>::value,
                            int> = 0>
  MapSource(F&& generator)  // NOLINT: implicit
      : next_(std::forward<F>(generator)) {}

  // From a range of things convertible to MapInput.
  template <typename R,
            std::enable_if_t<map_internal::IsRange<std::decay_t<R>>::value &&
                                 !std::is_same_v<std::decay_t<R>, MapSource>,
                             int> = 0>
  MapSource(R&& range) {  // NOLINT: implicit
    if constexpr (std::is_lvalue_reference_v<R>) {
      next_ = [it = std::begin(range),
               end = std::end(range)]() mutable -> std::optional<MapInput> {
        if (it == end) return std::nullopt;
        return MapInput(*it++);
      };
    } else {
      // std::function must be copyable, so the owned range is shared
      // between copies of the lambda (only one copy is ever called).
      auto owned = std::make_shared<std::decay_t<R>>(std::forward<R>(range));
      next_ = [owned, it = std::begin(*owned),
               end = std::end(*owned)]() mutable -> std::optional<MapInput> {
        if (it == end) return std::nullopt;
        return MapInput(std::move(*it++));
      };
    }
  }

  MapSource(std::initializer_list<MapInput> inputs)
      : MapSource(std::vector<MapInput>(inputs)) {}

  // From [first, last); the iterators must stay valid while the stream runs.
  template <typename It>
  MapSource(It first, It last)
      : next_([first, last]() mutable -> std::optional<MapInput> {
          if (first == last) return std::nullopt;
          return MapInput(*first++);
        }) {}

  // Next input, or std::nullopt at the end.
  std::optional<MapInput> Pull() { return next_ ? next_() : std::nullopt; }

 private:
  Next next_;
};

// The results of one Map call: a single-pass input range of MapItem.
//
// Iterating drives the stream: each step submits inputs until `window` are in
// flight (pulling them from the MapSource), then blocks for the next result.
// Nothing is submitted before the first step. A failed item does not end the
// stream (unless fail_fast); an RPC-level failure (connection lost, invalid
// options, fail_fast abort) ends iteration early and is reported by status().
//
// Thread-compatible: one thread iterates at a time. Move-only. Destroying an
// unfinished stream cancels the RPC; tasks already submitted keep running on
// the server.
class MapStream {
 public:
  struct State;

  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = MapItem;
    using difference_type = std::ptrdiff_t;
    using pointer = const MapItem*;
    using reference = const MapItem&;

    iterator() = default;
    reference operator*() const { return *item_; }
    pointer operator->() const { return item_; }
    iterator& operator++() {
      item_ = stream_->Next();
      return *this;
    }
    bool operator==(const iterator& other) const {
      return item_ == other.item_;
    }
    bool operator!=(const iterator& other) const { return !(*this == other); }

   private:
    friend class MapStream;
    iterator(MapStream* stream, const MapItem* item)
        : stream_(stream), item_(item) {}
    MapStream* stream_ = nullptr;
    const MapItem* item_ = nullptr;
  };

  // Starts a Map RPC on `channel` (Client::Map calls this). `on_close`, if
  // set, runs once when the stream ends or is destroyed, on that thread.
  static MapStream Open(const std::shared_ptr<grpc::Channel>& channel,
                        absl::string_view kind, MapSource inputs,
                        const MapOptions& options, bool ordered,
                        std::function<void()> on_close = nullptr);
  // A stream that yields nothing and whose status() is `status`.
  static MapStream Failed(absl::Status status);

  MapStream(MapStream&&) noexcept;
  MapStream& operator=(MapStream&&) noexcept;
  MapStream(const MapStream&) = delete;
  MapStream& operator=(const MapStream&) = delete;
  ~MapStream();

  // Begins (or continues) iteration: the first call yields the next result.
  iterator begin() { return iterator(this, Next()); }
  iterator end() { return iterator(this, nullptr); }

  // The next result, or nullptr when the stream has ended. The pointee stays
  // valid until the next call.
  const MapItem* Next();
  // OK while running and after a complete stream; the RPC's error otherwise
  // (Aborted after a fail_fast stop).
  absl::Status status() const;
  // True once Next() has returned nullptr.
  bool done() const;
  // Results delivered so far.
  uint64_t delivered() const;
  // Cancels the RPC; the next Next() returns nullptr and status() is
  // Cancelled.
  void Cancel();

 private:
  explicit MapStream(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace forq

#endif  // FORQ_CLIENT_MAP_H_
