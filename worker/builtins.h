// Built-in task kinds for demos, tests and benchmarks.
#ifndef FORQ_WORKER_BUILTINS_H_
#define FORQ_WORKER_BUILTINS_H_

#include "absl/status/status.h"

#include "worker/handler.h"

namespace forq::worker {

// Registers:
//   echo     result = payload
//   sleep    payload = milliseconds; sleeps (cancellable), result = payload
//   sha256   payload = "[N:]data": hex SHA-256 of data, hashed N times
//   primes   payload = n; counts primes <= n (CPU-bound), result = count
//   fail     returns a permanent error whose message is the payload
//   flaky    payload = k; fails (retryable) on attempts < k, then succeeds
//   crash    the worker aborts (SIGABRT)
//   hang     spins until cancelled or killed, ignoring SIGTERM; with payload
//            "ignore-cancel" it ignores cancellation too
absl::Status RegisterBuiltins(HandlerRegistry& registry);

}  // namespace forq::worker

#endif  // FORQ_WORKER_BUILTINS_H_
