#include "server/auth/token_auth.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "spdlog/spdlog.h"
#include <openssl/crypto.h>
#include <openssl/sha.h>

namespace forq::server {
namespace {

constexpr size_t kMinTokenLength = 16;

using Digest = std::array<unsigned char, 32>;

Digest Sha256(absl::string_view data) {
  Digest d;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(),
         d.data());
  return d;
}

// Methods by service. Anything not listed needs admin, so a new RPC is
// closed until someone decides who may call it.
const absl::flat_hash_map<std::string, Role>& MethodRoles() {
  static const auto* roles = [] {
    auto* m = new absl::flat_hash_map<std::string, Role>;
    const std::string task = "/forq.v1.TaskService/";
    for (const char* name : {"Get", "Wait", "WaitStream", "List", "Watch"}) {
      (*m)[task + name] = Role::kRead;
    }
    for (const char* name :
         {"Submit", "SubmitBatch", "Cancel", "Retry", "Map", "MapBatched"}) {
      (*m)[task + name] = Role::kSubmit;
    }
    const std::string pool = "/forq.v1.PoolService/";
    (*m)[pool + "GetPool"] = Role::kRead;
    (*m)[pool + "Drain"] = Role::kAdmin;
    (*m)[pool + "Resume"] = Role::kAdmin;
    return m;
  }();
  return *roles;
}

// Manager calls that neither change nor consume anything.
bool IsManagerRead(absl::string_view name) {
  static const auto* reads = new absl::flat_hash_map<std::string, bool>{
      {"DictGet", true},
      {"DictContains", true},
      {"DictKeys", true},
      {"DictItems", true},
      {"DictLen", true},
      {"ListGet", true},
      {"ListLen", true},
      {"ListSlice", true},
      {"ValueGet", true},
      {"ArrayGet", true},
      {"ArraySlice", true},
      {"ArrayLen", true},
      {"NamespaceGet", true},
      {"NamespaceList", true},
      {"QueueSize", true},
      {"SemaphoreValue", true},
      {"BoundedSemaphoreValue", true},
      {"EventIsSet", true},
      {"EventWait", true},
      {"PipePoll", true},
      {"ListObjects", true},
      {"Watch", true},
  };
  return reads->contains(name);
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kNone:
      return "none";
    case Role::kRead:
      return "read";
    case Role::kSubmit:
      return "submit";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

absl::StatusOr<Role> ParseRole(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "read") return Role::kRead;
  if (lower == "submit") return Role::kSubmit;
  if (lower == "admin") return Role::kAdmin;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown role '", name, "' (roles: admin, submit, read)"));
}

Role RequiredRole(absl::string_view method) {
  if (absl::StartsWith(method, "/grpc.health.v1.Health/")) return Role::kNone;
  if (absl::StartsWith(method, "/grpc.reflection.")) return Role::kRead;
  constexpr absl::string_view kManager = "/forq.v1.ManagerService/";
  if (absl::StartsWith(method, kManager)) {
    const absl::string_view name = method.substr(kManager.size());
    if (name == "DeleteObject") return Role::kAdmin;
    return IsManagerRead(name) ? Role::kRead : Role::kSubmit;
  }
  const auto& roles = MethodRoles();
  auto it = roles.find(method);
  return it == roles.end() ? Role::kAdmin : it->second;
}

std::string Sha256Hex(absl::string_view data) {
  const Digest d = Sha256(data);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

absl::StatusOr<std::unique_ptr<TokenTable>> TokenTable::Load(
    const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read --auth_tokens_file ", path));
  }
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && (st.st_mode & 0077) != 0) {
    spdlog::warn(
        "auth: {} is readable by other users (mode {:o}); chmod 600 it or "
        "store sha256: digests instead of tokens",
        path, st.st_mode & 0777);
  }
  std::stringstream text;
  text << in.rdbuf();
  return Parse(text.str(), path);
}

absl::StatusOr<std::unique_ptr<TokenTable>> TokenTable::Parse(
    absl::string_view text, absl::string_view source) {
  std::unique_ptr<TokenTable> table(new TokenTable());
  std::vector<Entry> entries;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_no, ": ", why));
    };
    if (fields.size() != 2) {
      return bad("expected 'TOKEN ROLE' or 'sha256:HEX ROLE'");
    }
    absl::StatusOr<Role> role = ParseRole(fields[1]);
    if (!role.ok()) return bad(role.status().message());
    Entry e;
    e.role = *role;
    if (absl::StartsWith(fields[0], "sha256:")) {
      const absl::string_view hex = fields[0].substr(7);
      if (hex.size() != 64 || !std::all_of(hex.begin(), hex.end(), [](char c) {
            return absl::ascii_isxdigit(static_cast<unsigned char>(c));
          })) {
        return bad("sha256: needs 64 hex digits");
      }
      const std::string bytes = absl::HexStringToBytes(hex);
      std::copy(bytes.begin(), bytes.end(), e.digest.begin());
    } else {
      if (fields[0].size() < kMinTokenLength) {
        return bad(absl::StrCat("tokens must have at least ", kMinTokenLength,
                                " characters"));
      }
      e.digest = Sha256(fields[0]);
    }
    for (const Entry& other : entries) {
      if (other.digest == e.digest) return bad("duplicate token");
    }
    entries.push_back(e);
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, " holds no tokens"));
  }
  MutexLock lock(&table->mu_);
  table->entries_ = std::move(entries);
  return table;
}

absl::Status TokenTable::Reload(const std::string& path) {
  absl::StatusOr<std::unique_ptr<TokenTable>> fresh = Load(path);
  if (!fresh.ok()) return fresh.status();
  std::vector<Entry> entries;
  {
    MutexLock lock(&(*fresh)->mu_);
    entries = std::move((*fresh)->entries_);
  }
  {
    MutexLock lock(&mu_);
    entries_ = std::move(entries);
  }
  generation_.fetch_add(1);
  return absl::OkStatus();
}

size_t TokenTable::size() const {
  MutexLock lock(&mu_);
  return entries_.size();
}

Role TokenTable::Lookup(absl::string_view token) const {
  return LookupDigest(Sha256(token));
}

Role TokenTable::LookupDigest(const Digest& d) const {
  MutexLock lock(&mu_);
  int found = 0;
  for (const Entry& e : entries_) {
    // No early exit and no branch on the data: every entry is compared.
    const int match = CRYPTO_memcmp(d.data(), e.digest.data(), d.size()) == 0;
    found |= match * static_cast<int>(e.role);
  }
  return static_cast<Role>(found);
}

absl::Status TokenTable::Authorize(absl::string_view authorization,
                                   Role required,
                                   absl::string_view method) const {
  if (required == Role::kNone) return absl::OkStatus();
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "this forqd requires a token: send 'authorization: Bearer TOKEN' "
        "(forq --token or FORQ_TOKEN)");
  }
  constexpr absl::string_view kBearer = "bearer ";
  if (authorization.size() <= kBearer.size() ||
      !absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return absl::UnauthenticatedError(
        "the authorization header must be 'Bearer TOKEN'");
  }
  const Digest digest =
      Sha256(absl::StripAsciiWhitespace(authorization.substr(kBearer.size())));
  const Role role = LookupDigest(digest);
  if (role == Role::kNone) {
    return absl::UnauthenticatedError("unknown token");
  }
  if (role < required) {
    return absl::PermissionDeniedError(
        absl::StrCat("a ", RoleName(role), " token may not call ", method,
                     "; it needs the ", RoleName(required), " role"));
  }
  return absl::OkStatus();
}

}  // namespace forq::server
