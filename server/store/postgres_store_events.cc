// PostgresStore in cluster mode: the upkeep thread, notifications
// (LISTEN/NOTIFY) between nodes, and watches across nodes.
#include <poll.h>
#include <pthread.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "spdlog/spdlog.h"

#include "server/store/postgres_internal.h"

#include <libpq-fe.h>

namespace forq::server {

namespace {

using postgres_internal::Conn;
using postgres_internal::IdleTxnTimeout;

// How often every remote wait is checked against the store anyway.
constexpr absl::Duration kRecheck = absl::Seconds(5);

}  // namespace

PostgresStore::Callbacks PostgresStore::callbacks() {
  MutexLock lock(&callbacks_mu_);
  return callbacks_;
}

absl::Status PostgresStore::StartCluster(Callbacks callbacks,
                                         std::vector<std::string> kinds) {
  if (!cluster_.enabled) {
    return absl::FailedPreconditionError("postgres store: not in cluster mode");
  }
  if (absl::Status s = RegisterKinds(std::move(kinds)); !s.ok()) return s;
  {
    MutexLock lock(&callbacks_mu_);
    callbacks_ = std::move(callbacks);
  }
  if (!cluster_.background) return absl::OkStatus();
  MutexLock lock(&close_mu_);
  if (upkeep_thread_.joinable()) return absl::OkStatus();
  upkeep_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "forq-cluster");
    UpkeepLoop();
  });
  return absl::OkStatus();
}

void PostgresStore::StopCluster() {
  std::thread t;
  {
    MutexLock lock(&close_mu_);
    t = std::move(upkeep_thread_);
  }
  {
    MutexLock lock(&upkeep_stop_mu_);
    upkeep_stop_ = true;
  }
  if (t.joinable()) t.join();
  MutexLock lock(&callbacks_mu_);
  callbacks_ = Callbacks();
}

void PostgresStore::HandleNotifications(Conn& listen, const Callbacks& cb) {
  PQconsumeInput(listen.get());
  bool work = false;
  std::vector<std::string> finished;
  std::vector<AttemptRef> cancels;
  std::vector<v1::TaskEvent> events;
  std::vector<std::string> watches;
  while (PGnotify* n = PQnotifies(listen.get())) {
    const absl::string_view channel(n->relname);
    const absl::string_view extra(n->extra);
    // Events and watches carry "<sender node>|<body>"; a node ignores its
    // own (its watchers see its own tasks' events directly).
    const size_t bar = extra.rfind('|');
    const bool own =
        bar == absl::string_view::npos || extra.substr(0, bar) == node_id_;
    const absl::string_view body =
        bar == absl::string_view::npos ? "" : extra.substr(bar + 1);
    if (channel == "forq_work") {
      work = true;
    } else if (channel == "forq_done") {
      for (absl::string_view id :
           absl::StrSplit(extra, ',', absl::SkipEmpty())) {
        finished.emplace_back(id);
      }
    } else if (channel == "forq_cancel") {
      for (absl::string_view one :
           absl::StrSplit(extra, ',', absl::SkipEmpty())) {
        std::pair<absl::string_view, absl::string_view> p =
            absl::StrSplit(one, absl::MaxSplits(':', 1));
        int attempt = 0;
        if (absl::SimpleAtoi(p.second, &attempt)) {
          cancels.push_back(AttemptRef{std::string(p.first), attempt});
        }
      }
    } else if (channel == "forq_event" && !own) {
      std::string bytes;
      v1::TaskEvent e;
      if (absl::Base64Unescape(body, &bytes) && e.ParseFromString(bytes)) {
        events.push_back(std::move(e));
      }
    } else if (channel == "forq_node" && extra != node_id_) {
      node_notices_.fetch_add(1, std::memory_order_acq_rel);
      alone_.store(false, std::memory_order_release);
    } else if (channel == "forq_watch" && !own) {
      for (absl::string_view key :
           absl::StrSplit(body, ',', absl::SkipEmpty())) {
        watches.emplace_back(key);
      }
    }
    PQfreemem(n);
  }
  if (!watches.empty()) {
    MutexLock lock(&watch_mu_);
    const absl::Time until = absl::Now() + 3 * kWatchRefresh;
    for (std::string& key : watches) remote_watches_[std::move(key)] = until;
    any_remote_watch_.store(true, std::memory_order_release);
  }
  if (!cancels.empty()) {
    // Only attempts this node runs (every node hears every cancel).
    MutexLock lock(&owned_mu_);
    std::vector<AttemptRef> mine;
    for (AttemptRef& a : cancels) {
      auto it = owned_.find(a.task_id);
      if (it == owned_.end() || it->second.lost ||
          it->second.attempt != a.attempt) {
        continue;
      }
      it->second.cancel_told = true;  // the heartbeat need not tell again
      mine.push_back(std::move(a));
    }
    cancels.swap(mine);
  }
  if (work && cb.wake) cb.wake();
  if (!finished.empty() && cb.finished) cb.finished(finished);
  if (!cancels.empty() && cb.cancel) cb.cancel(cancels);
  if (!events.empty() && cb.events) cb.events(events);
}

void PostgresStore::SetWatched(const std::string& key, bool watched) {
  if (!cluster_.enabled) return;
  bool added = false;
  {
    MutexLock lock(&watch_mu_);
    if (watched) {
      added = ++local_watches_[key] == 1;
    } else if (auto it = local_watches_.find(key);
               it != local_watches_.end() && --it->second <= 0) {
      // The other nodes forget it when it is not refreshed.
      local_watches_.erase(it);
    }
  }
  if (!added) return;
  // A new key: the other nodes hear of it at once.
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kNotify;
  op->notes.emplace_back("forq_watch", absl::StrCat(node_id_, "|", key));
  op->write_done = [](absl::Status) {};
  Refuse(Enqueue(std::move(op)));
}

void PostgresStore::RefreshWatches() {
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kNotify;
  op->write_done = [](absl::Status) {};
  {
    MutexLock lock(&watch_mu_);
    const absl::Time now = absl::Now();
    absl::erase_if(remote_watches_,
                   [&](const auto& w) { return w.second <= now; });
    any_remote_watch_.store(!remote_watches_.empty(),
                            std::memory_order_release);
    std::string payload;
    for (const auto& [key, n] : local_watches_) {
      if (!payload.empty() && payload.size() + key.size() > 7000) {
        op->notes.emplace_back("forq_watch",
                               absl::StrCat(node_id_, "|", payload));
        payload.clear();
      }
      if (!payload.empty()) payload.push_back(',');
      payload.append(key);
    }
    if (!payload.empty()) {
      op->notes.emplace_back("forq_watch",
                             absl::StrCat(node_id_, "|", payload));
    }
  }
  if (op->notes.empty()) return;
  Refuse(Enqueue(std::move(op)));
}

bool PostgresStore::Watched(const v1::Task& task) {
  if (!any_remote_watch_.load(std::memory_order_acquire)) return false;
  MutexLock lock(&watch_mu_);
  const absl::Time now = absl::Now();
  for (const std::string& key :
       {absl::StrCat("t:", task.id()), absl::StrCat("q:", task.queue()),
        std::string("q:*")}) {
    auto it = remote_watches_.find(key);
    if (it != remote_watches_.end() && it->second > now) return true;
  }
  return false;
}

void PostgresStore::PublishEvent(const v1::TaskEvent& event) {
  // A notification holds under 8000 bytes: a large task goes without its
  // payload and result (the watcher can Get them).
  constexpr size_t kMaxEventBytes = 5000;
  std::string bytes;
  if (event.ByteSizeLong() + node_id_.size() > kMaxEventBytes) {
    v1::TaskEvent small = event;
    small.mutable_task()->clear_payload();
    small.mutable_task()->clear_result();
    if (small.ByteSizeLong() + node_id_.size() > kMaxEventBytes) return;
    small.SerializeToString(&bytes);
  } else {
    event.SerializeToString(&bytes);
  }
  auto op = std::make_unique<PendingWrite>();
  op->type = PendingWrite::Type::kNotify;
  op->notes.emplace_back(
      "forq_event", absl::StrCat(node_id_, "|", absl::Base64Escape(bytes)));
  op->write_done = [](absl::Status) {};
  Refuse(Enqueue(std::move(op)));
}

std::unique_ptr<PostgresStore::Conn> PostgresStore::Listen(
    const Callbacks& cb) {
  absl::StatusOr<std::unique_ptr<Conn>> c =
      Conn::Connect(uri_, durability_, IdleTxnTimeout(cluster_));
  if (!c.ok() ||
      !(*c)->Command("LISTEN forq_work; LISTEN forq_done; LISTEN "
                     "forq_cancel; LISTEN forq_event; LISTEN forq_watch; "
                     "LISTEN forq_node",
                     "listen")
           .ok()) {
    return nullptr;
  }
  // Nodes announced while not listening are counted.
  (void)CountOtherNodesNow();
  // Notifications sent while not listening are lost: look again.
  if (cb.wake) cb.wake();
  if (cb.finished) cb.finished({});
  return std::move(*c);
}

void PostgresStore::CountIfAnnounced(uint64_t& counted) {
  const uint64_t heard = node_notices_.load(std::memory_order_acquire);
  if (heard == counted) return;
  // A node started or registered its kinds: count again now, not at the
  // next heartbeat, so its kinds are accepted here at once.
  counted = heard;
  if (!CountOtherNodesNow().ok()) {
    alone_.store(false, std::memory_order_release);
  }
}

// One thread: the LISTEN connection (woken by notifications, waited on
// with poll() so the timers below keep running), the heartbeat every
// lease/3, the self-fence check, the reaper every lease/2, and the
// fallback polls for work and for finished tasks.
void PostgresStore::UpkeepLoop() {
  std::unique_ptr<Conn> listen;
  absl::Time next_listen_try = absl::InfinitePast();
  absl::Time next_heartbeat = absl::Now() + cluster_.lease / 3;
  absl::Time next_reap = absl::Now();
  absl::Time next_poll = absl::Now() + cluster_.poll_interval;
  absl::Time next_recheck = absl::Now() + kRecheck;
  absl::Time next_watch_refresh = absl::Now() + kWatchRefresh;
  uint64_t notices_counted = node_notices_.load(std::memory_order_acquire);
  for (;;) {
    {
      MutexLock lock(&upkeep_stop_mu_);
      if (upkeep_stop_) return;
    }
    Callbacks cb = callbacks();
    absl::Time now = absl::Now();
    if (listen == nullptr || listen->bad()) {
      if (now >= next_listen_try) {
        next_listen_try = now + absl::Seconds(1);
        listen.reset();
        listen = Listen(cb);
      }
    }
    // Waits for a notification or the next timer (at most the poll
    // interval, so a stop request is seen soon).
    absl::Time until = std::min({next_heartbeat, next_reap, next_poll});
    absl::Duration wait = std::max(absl::ZeroDuration(), until - now);
    if (listen != nullptr && !listen->bad()) {
      struct pollfd pfd = {PQsocket(listen->get()), POLLIN, 0};
      int ms = static_cast<int>(absl::ToInt64Milliseconds(wait));
      if (poll(&pfd, 1, ms) > 0) HandleNotifications(*listen, cb);
    } else if (wait > absl::ZeroDuration()) {
      MutexLock lock(&upkeep_stop_mu_);
      // Nothing signals this: it is a timed wait, not synchronisation.
      CondVar idle;
      idle.WaitWithTimeout(&upkeep_stop_mu_, wait);
    }
    now = absl::Now();
    if (now >= next_poll) {
      next_poll = now + cluster_.poll_interval;
      if (cb.wake) cb.wake();
    }
    if (now >= next_recheck) {
      // A safety net only: ends reach waiters by notification (and after
      // a reconnect of the LISTEN connection, by a check of them all).
      next_recheck = now + kRecheck;
      if (cb.finished) cb.finished({});
    }
    if (now >= next_watch_refresh) {
      next_watch_refresh = now + kWatchRefresh;
      RefreshWatches();
    }
    CountIfAnnounced(notices_counted);
    CheckSelfFence();
    if (now >= next_heartbeat) {
      absl::Status s = Heartbeat();
      // After a failure try again soon: the self-fence deadline is lease/2.
      next_heartbeat =
          absl::Now() + (s.ok() ? cluster_.lease / 3 : cluster_.lease / 10);
      if (!s.ok()) spdlog::error("cluster heartbeat: {}", s.ToString());
      CheckSelfFence();
    }
    if (now >= next_reap) {
      absl::StatusOr<int> n = ReapExpired();
      // Every lease/2, at most 500 ms: an expired lease is taken back
      // well within a second.
      next_reap = absl::Now() +
                  ((n.ok() && *n == 500)
                       ? absl::ZeroDuration()
                       : std::min(cluster_.lease / 2, absl::Milliseconds(500)));
      if (!n.ok()) spdlog::error("cluster reaper: {}", n.status().ToString());
    }
  }
}

}  // namespace forq::server
