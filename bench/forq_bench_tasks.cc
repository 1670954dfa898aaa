// forq_bench sections of the task path: submit, batch, e2e, rtt and map
// (see bench/forq_bench.cc).
#include <functional>
#include <memory>

#include "bench/forq_bench.h"

namespace forq::bench {

int SectionSubmit(const Flags& f, bool batch) {
  // Batches start at 4 threads (the batch targets); unary also runs 1.
  const std::vector<int> thread_counts =
      batch ? std::vector<int>{4, 64} : std::vector<int>{1, 4, 64};
  std::vector<v1::TaskSpec> specs(100);
  for (auto& s : specs) {
    s.set_kind("echo");
    s.set_payload("x");
  }
  for (const std::string& d : f.durabilities) {
    for (int threads : thread_counts) {
      for (int rep = 0; rep < f.reps; ++rep) {
        auto s = StartServer(f.workers, d);
        if (!s.ok()) {
          std::cerr << "start forqd: " << s.status() << "\n";
          return 1;
        }
        Client* c = s->client.get();
        if (f.paused) {
          auto dr = c->Drain(absl::Seconds(5));
          if (!dr.ok()) {
            std::cerr << "Drain: " << dr.status() << "\n";
            return 1;
          }
        }
        const std::string paused = f.paused ? ", dispatch paused" : "";
        int64_t errors = 0;
        double rate;
        std::string op;
        if (batch) {
          rate = RunTimed(
              threads, f.seconds,
              [&]() -> int {
                auto r = c->SubmitBatch(specs);
                return r.ok() ? static_cast<int>(r->size()) : -1;
              },
              &errors);
          op = absl::StrCat("SubmitBatch(100) ", d, ", ", threads, " threads",
                            paused);
        } else {
          rate = RunTimed(
              threads, f.seconds,
              [&]() -> int { return c->Submit("echo", "x").ok() ? 1 : -1; },
              &errors);
          op = absl::StrCat("unary Submit ", d, ", ", threads, " threads",
                            paused);
        }
        g_results->Add(op, "tasks/s", rate);
        if (errors > 0) {
          Note(absl::StrCat(op, ": ", errors, " failed calls"));
          g_results->Add(op + " failed calls", "calls", errors);
        }
      }
    }
  }
  return 0;
}

namespace {

// N echo tasks (payload i for task i) from one thread, by `mode`: "unary"
// (one Submit each); "batch" (SubmitBatch of 100, each waiting for its
// acknowledgement before the next is sent); "async" (up to 8 batches of 100
// travel at once: apply_async does not wait for each task either).
absl::StatusOr<std::vector<TaskFuture>> SubmitEchoes(Client& c, int n,
                                                     const std::string& mode) {
  if (mode == "unary") {
    std::vector<TaskFuture> futs;
    futs.reserve(n);
    for (int i = 0; i < n; ++i) {
      absl::StatusOr<TaskFuture> r = c.Submit("echo", absl::StrCat(i));
      if (!r.ok()) return r.status();
      futs.push_back(*std::move(r));
    }
    return futs;
  }
  std::vector<v1::TaskSpec> specs(n);
  for (int i = 0; i < n; ++i) {
    specs[i].set_kind("echo");
    specs[i].set_payload(absl::StrCat(i));
  }
  Client::ManyOptions many;
  many.in_flight = mode == "async" ? 8 : 1;
  return c.SubmitMany(specs, many);
}

}  // namespace

// apply_async x N then get all: one thread submits N echo tasks back to back
// (unary, or SubmitBatch of 100), then waits for every result in order.
int SectionE2E(const Flags& f) {
  for (const std::string& d : {std::string("sync"), std::string("none")}) {
    if (!Wanted(f, d)) continue;
    for (const std::string mode : {"unary", "batch", "async"}) {
      if (!absl::c_linear_search(f.submits, mode)) continue;
      const bool batched = mode != "unary";
      const bool async = mode == "async";
      for (const std::string& wait : f.waits) {
        for (const std::string& tr : f.transports) {
          for (int rep = 0; rep < f.reps; ++rep) {
            auto s = StartServer(f.workers, d, wait == "stream", tr);
            if (!s.ok()) {
              std::cerr << "start forqd: " << s.status() << "\n";
              return 1;
            }
            // Submits N echoes (time taken in last_submit_s), then gets every
            // result; false on a wrong or failed one.
            double last_submit_s = 0;
            const auto pass = [&] {
              const auto t0 = Clock::now();
              absl::StatusOr<std::vector<TaskFuture>> submitted =
                  SubmitEchoes(*s->client, f.n, mode);
              if (!submitted.ok()) {
                std::cerr << mode << " submit: " << submitted.status() << "\n";
                return false;
              }
              last_submit_s = SecondsSince(t0);
              int bad = 0;
              for (int i = 0; i < f.n; ++i) {
                auto r = (*submitted)[i].Get();
                if (!r.ok() || *r != absl::StrCat(i)) ++bad;
              }
              if (bad > 0) std::cerr << "e2e: " << bad << " wrong or failed\n";
              return bad == 0;
            };
            const int pid = s->forqd->pid();
            Probe probe(pid);
            const double self0 = CpuSeconds({getpid()});
            const auto t0 = Clock::now();
            if (!pass()) return 1;
            const double total_s = SecondsSince(t0);
            const double self = CpuSeconds({getpid()}) - self0;
            const double submit_s = last_submit_s;
            probe.Stop();
            double syscalls = -1;
            if (!CountSyscalls(f, pid, f.n, pass, &syscalls)) return 1;
            const std::string how =
                absl::StrCat(!batched ? "Submit x N"
                             : async  ? "SubmitBatchAsync(100) x N/100 (8 in "
                                        "flight)"
                                      : "SubmitBatch(100) x N/100",
                             wait == "rpc" ? " (Wait RPC per task)" : "");
            const std::string op =
                absl::StrCat(f.n, " echo: ", how, ", ", d, TransportLabel(tr));
            g_results->Add(absl::StrCat(f.n, " echo: ", how, " then Get all, ",
                                        d, TransportLabel(tr), ", end to end"),
                           "tasks/s", f.n / total_s);
            g_results->Add(op + ", submit only", "tasks/s", f.n / submit_s);
            probe.Report(op, "forqd tree", f.n, "task", syscalls);
            g_results->Add(op + ": client CPU per task", "us",
                           self * 1e6 / f.n);
          }
        }
      }
    }
  }
  return 0;
}

namespace {

// One round trip of the rtt section: its result name, the server process
// tree it costs (CPU and switches per `unit`, reported as `server`) and the
// call; p50 is filled in by MeasureRtts.
struct RttOp {
  std::string name;
  int pid = 0;
  std::string server;
  std::string unit;
  std::function<bool()> op;
  double p50 = -1;
};

// Times the calls of `ops` in turn, one of each per round, --rtt_samples
// rounds after 100 warm-up ones: calls timed together see the machine at
// the same moments (its speed here moves by up to 2x within minutes), so
// their ratio holds. Records "<name> p50" and "<name> p99" and the probes'
// figures, the system calls from an untimed pass of each call alone; false
// once a call failed.
bool MeasureRtts(const Flags& f, std::vector<RttOp>& ops) {
  const int rounds = f.rtt_samples + 100;
  std::vector<std::vector<double>> us(ops.size());
  for (auto& v : us) v.reserve(f.rtt_samples);
  std::vector<std::unique_ptr<Probe>> probes;
  probes.reserve(ops.size());
  for (const RttOp& o : ops) probes.push_back(std::make_unique<Probe>(o.pid));
  for (int i = 0; i < rounds; ++i) {
    for (size_t k = 0; k < ops.size(); ++k) {
      const auto t0 = Clock::now();
      if (!ops[k].op()) {
        std::cerr << ops[k].name << ": a call failed\n";
        return false;
      }
      if (i >= 100) us[k].push_back(SecondsSince(t0) * 1e6);
    }
  }
  for (auto& p : probes) p->Stop();
  for (size_t k = 0; k < ops.size(); ++k) {
    RttOp& o = ops[k];
    std::vector<double> untimed;
    double syscalls = -1;
    if (!CountSyscalls(
            f, o.pid, rounds,
            [&] { return Rtt(f.rtt_samples, o.op, &untimed); }, &syscalls)) {
      std::cerr << o.name << ": a call failed\n";
      return false;
    }
    probes[k]->Report(o.name, o.server, rounds, o.unit, syscalls);
    std::sort(us[k].begin(), us[k].end());
    o.p50 = Pct(us[k], 50);
    g_results->Add(o.name + " p50", "us", o.p50);
    g_results->Add(o.name + " p99", "us", Pct(us[k], 99));
  }
  return true;
}

}  // namespace

int SectionRtt(const Flags& f) {
  for (const std::string& d : {std::string("sync"), std::string("none")}) {
    if (!Wanted(f, d)) continue;
    for (const std::string& tr : f.transports) {
      const std::string dt = d + TransportLabel(tr);
      for (int rep = 0; rep < f.reps; ++rep) {
        auto s = StartServer(f.workers, d, true, tr);
        if (!s.ok()) {
          std::cerr << "start forqd: " << s.status() << "\n";
          return 1;
        }
        Client* c = s->client.get();
        const int pid = s->forqd->pid();
        std::vector<RttOp> submit_get = {
            {absl::StrCat("Submit().Get() echo RTT ", dt), pid, "forqd tree",
             "task", [&] {
               auto fu = c->Submit("echo", "x");
               return fu.ok() && fu->Get().ok();
             }}};
        if (!MeasureRtts(f, submit_get)) return 1;
        // The same round trip as one call (Submit with wait: pool.apply).
        std::vector<RttOp> apply = {
            {absl::StrCat("Apply() echo RTT ", dt), pid, "forqd tree", "task",
             [&] { return c->Apply("echo", "x").ok(); }}};
        if (!MeasureRtts(f, apply)) return 1;
        // Baseline: a unary call that touches neither store nor workers,
        // timed in turn with its floor: a bare gRPC callback server (child
        // process) answering TaskService.Get with the request's id.
        auto echo = EchoServer::Start(tr);
        if (!echo.ok()) {
          std::cerr << "echo server: " << echo.status() << "\n";
          return 1;
        }
        auto stub = v1::TaskService::NewStub(grpc::CreateChannel(
            (*echo)->address(), grpc::InsecureChannelCredentials()));
        std::vector<RttOp> unary = {
            {absl::StrCat("GetPool() RTT (unary baseline) ", dt), pid,
             "forqd tree", "call", [&] { return c->GetPool().ok(); }},
            {absl::StrCat("bare gRPC callback echo RTT", TransportLabel(tr)),
             (*echo)->pid(), "echo server", "call", [&] {
               grpc::ClientContext ctx;
               ctx.set_deadline(
                   absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
               v1::GetTaskRequest req;
               req.set_id("echo");
               v1::Task resp;
               return stub->Get(&ctx, req, &resp).ok() && resp.id() == "echo";
             }}};
        if (!MeasureRtts(f, unary)) return 1;
        g_results->Add(absl::StrCat("GetPool p50 / bare echo p50, ", dt),
                       "ratio", unary[0].p50 / unary[1].p50);
      }
    }
  }
  return 0;
}

namespace {

// The Map protocol before MapBatched, as the client library spoke it: one
// input per request message, one result per response message, the window
// topped up before each Read. Returns results read, failed ones in *bad.
absl::StatusOr<int64_t> MapOneByOne(const std::string& address, int n,
                                    bool ordered, int64_t* bad) {
  auto stub = v1::TaskService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto rpc = stub->Map(&ctx);
  v1::MapRequest req;
  req.mutable_header()->set_kind("echo");
  req.mutable_header()->set_ordered(ordered);
  req.mutable_header()->set_window(kDefaultMapWindow);
  if (!rpc->Write(req)) return absl::UnavailableError("Map header");
  int sent = 0, in_flight = 0;
  int64_t got = 0;
  v1::MapResult r;
  while (true) {
    while (sent < n && in_flight < kDefaultMapWindow) {
      req.mutable_input()->set_payload(absl::StrCat(sent));
      if (!rpc->Write(req)) return absl::UnavailableError("Map write");
      ++sent;
      ++in_flight;
      if (sent == n) rpc->WritesDone();
    }
    if (in_flight == 0) break;
    if (!rpc->Read(&r)) break;
    --in_flight;
    ++got;
    if (r.state() != v1::SUCCEEDED) ++*bad;
  }
  grpc::Status st = rpc->Finish();
  if (!st.ok()) return FromGrpcStatus(st);
  return got;
}

// Maps n echo inputs on `s`, by the client library ("batched") or one per
// message ("single"); false (and why on stderr) unless all n succeeded.
bool MapPass(Server& s, int n, bool ordered, const std::string& how) {
  std::vector<std::string> inputs;
  inputs.reserve(n);
  for (int i = 0; i < n; ++i) inputs.push_back(absl::StrCat(i));
  int64_t got = 0, bad = 0;
  absl::Status status;
  if (how == "batched") {
    MapStream stream = ordered
                           ? s.client->Map("echo", std::move(inputs))
                           : s.client->MapUnordered("echo", std::move(inputs));
    for (const MapItem& r : stream) {
      ++got;
      if (!r.ok()) ++bad;
    }
    status = stream.status();
  } else {
    absl::StatusOr<int64_t> r = MapOneByOne(s.address, n, ordered, &bad);
    status = r.status();
    if (r.ok()) got = *r;
  }
  if (status.ok() && got == n && bad == 0) return true;
  std::cerr << "map: status " << status << ", " << got << " results, " << bad
            << " failed\n";
  return false;
}

}  // namespace

int SectionMap(const Flags& f) {
  for (const std::string& d : {std::string("sync"), std::string("none")}) {
    if (!Wanted(f, d)) continue;
    for (bool ordered : {true, false}) {
      for (const std::string& how : f.maps) {
        for (const std::string& tr : f.transports) {
          for (int rep = 0; rep < f.reps; ++rep) {
            auto s = StartServer(f.workers, d, true, tr);
            if (!s.ok()) {
              std::cerr << "start forqd: " << s.status() << "\n";
              return 1;
            }
            const int pid = s->forqd->pid();
            Probe probe(pid);
            const auto t0 = Clock::now();
            if (!MapPass(*s, f.n, ordered, how)) return 1;
            const double secs = SecondsSince(t0);
            probe.Stop();
            double syscalls = -1;
            if (!CountSyscalls(
                    f, pid, f.n, [&] { return MapPass(*s, f.n, ordered, how); },
                    &syscalls)) {
              return 1;
            }
            const std::string name = absl::StrCat(
                ordered ? "Map (ordered)" : "MapUnordered",
                how == "single" ? " one input/result per message" : "");
            g_results->Add(
                absl::StrCat(name, " ", f.n, " echo, window ",
                             kDefaultMapWindow, ", ", d, TransportLabel(tr)),
                "tasks/s", f.n / secs);
            probe.Report(absl::StrCat(name, " ", d, TransportLabel(tr)),
                         "forqd tree", f.n, "task", syscalls);
          }
        }
      }
    }
  }
  return 0;
}

}  // namespace forq::bench
