// Bearer-token authentication with roles for forqd's gRPC and HTTP front
// ends. Tokens come from --auth_tokens_file; only their SHA-256 digests are
// kept in memory and presented tokens are compared digest to digest with
// CRYPTO_memcmp, so a lookup takes the same time whichever entry matches.
#ifndef FORQ_SERVER_AUTH_TOKEN_AUTH_H_
#define FORQ_SERVER_AUTH_TOKEN_AUTH_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "common/mutex.h"

namespace forq::server {

// Roles are ordered: each one allows everything the ones below it allow.
enum class Role {
  kNone = 0,    // as a requirement: the method is open to everyone
  kRead = 1,    // Get, List, Wait, Watch, GetPool, Manager reads, /metrics
  kSubmit = 2,  // + Submit, Cancel, Retry, Map, Manager data operations
  kAdmin = 3,   // + Drain/Resume, Manager DeleteObject, anything unlisted
};

absl::string_view RoleName(Role role);
// "admin", "submit" or "read" (case-insensitive).
absl::StatusOr<Role> ParseRole(absl::string_view name);

// The role a gRPC method ("/forq.v1.TaskService/Submit") requires. Health
// checks are open; methods forq does not know need admin.
Role RequiredRole(absl::string_view method);

// SHA-256 of `data`, lower-case hex (for `sha256:HEX` lines).
std::string Sha256Hex(absl::string_view data);

// Thread-safe. The entries change only by Reload (SIGHUP).
class TokenTable {
 public:
  // Parses a tokens file: one `TOKEN ROLE` or `sha256:HEX ROLE` pair per
  // line; blank lines and lines starting with '#' are skipped. Clear tokens
  // must be at least 16 characters. InvalidArgument names the bad line;
  // NotFound/PermissionDenied when the file cannot be read.
  static absl::StatusOr<std::unique_ptr<TokenTable>> Load(
      const std::string& path);
  static absl::StatusOr<std::unique_ptr<TokenTable>> Parse(
      absl::string_view text, absl::string_view source = "tokens");

  TokenTable(const TokenTable&) = delete;
  TokenTable& operator=(const TokenTable&) = delete;

  // The role of `token`, kNone when unknown. Hashes the token once and
  // compares its digest with every entry without an early exit.
  Role Lookup(absl::string_view token) const ABSL_LOCKS_EXCLUDED(mu_);

  // Checks an `authorization` value ("Bearer TOKEN") against the role
  // `method` needs: Unauthenticated when missing, malformed or unknown,
  // PermissionDenied when the token's role is too low. `method` only
  // appears in messages.
  absl::Status Authorize(absl::string_view authorization, Role required,
                         absl::string_view method) const;

  // Re-reads `path` (as Load) and, if it parses, replaces every entry at
  // once: calls checked afterwards see only the new tokens. On error the
  // old entries stay and the error says why.
  absl::Status Reload(const std::string& path) ABSL_LOCKS_EXCLUDED(mu_);

  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  // Bumped by every successful Reload: a caller that authorized a
  // connection once (the local Manager socket) re-checks when it changed.
  uint64_t generation() const { return generation_.load(); }

 private:
  struct Entry {
    std::array<unsigned char, 32> digest;
    Role role;
  };
  TokenTable() = default;
  Role LookupDigest(const std::array<unsigned char, 32>& digest) const
      ABSL_LOCKS_EXCLUDED(mu_);

  mutable Mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> generation_{0};
};

}  // namespace forq::server

#endif  // FORQ_SERVER_AUTH_TOKEN_AUTH_H_
