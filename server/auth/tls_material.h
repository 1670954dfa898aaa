// The certificate, key and optional client CA forqd serves TLS with, read
// from files and re-read on SIGHUP. Both front ends take the current PEMs
// for each new connection, so a reload needs no restart and drops nothing.
#ifndef FORQ_SERVER_AUTH_TLS_MATERIAL_H_
#define FORQ_SERVER_AUTH_TLS_MATERIAL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "common/mutex.h"

namespace forq::server {

struct TlsFiles {
  std::string cert_file;       // PEM certificate chain
  std::string key_file;        // PEM private key of the first certificate
  std::string client_ca_file;  // PEM CA bundle; set = clients need a cert
};

struct TlsPems {
  std::string cert;
  std::string key;
  std::string client_ca;  // empty: no client certificates asked for
};

// Thread-safe.
class TlsMaterial {
 public:
  // Reads and checks the files (the key must match the certificate).
  // InvalidArgument/NotFound with the file name on any problem.
  static absl::StatusOr<std::unique_ptr<TlsMaterial>> Load(TlsFiles files);

  TlsMaterial(const TlsMaterial&) = delete;
  TlsMaterial& operator=(const TlsMaterial&) = delete;

  // Re-reads the files; on error keeps serving the previous PEMs and
  // returns the error. Bumps generation() on success.
  absl::Status Reload() ABSL_LOCKS_EXCLUDED(mu_);

  std::shared_ptr<const TlsPems> Current() const ABSL_LOCKS_EXCLUDED(mu_);
  // Changes whenever Current() does; cheap (one atomic load).
  uint64_t generation() const {
    return generation_.load(std::memory_order_acquire);
  }
  bool mutual() const { return !files_.client_ca_file.empty(); }

 private:
  explicit TlsMaterial(TlsFiles files) : files_(std::move(files)) {}

  const TlsFiles files_;
  mutable Mutex mu_;
  std::shared_ptr<const TlsPems> pems_ ABSL_GUARDED_BY(mu_);
  // Release after pems_ is stored, so a reader that sees the new value
  // finds the new PEMs under mu_.
  std::atomic<uint64_t> generation_{0};
};

// Reads and validates the PEM files; exposed for tests.
absl::StatusOr<TlsPems> ReadTlsPems(const TlsFiles& files);

}  // namespace forq::server

#endif  // FORQ_SERVER_AUTH_TLS_MATERIAL_H_
