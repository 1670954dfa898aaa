// Starts a private PostgreSQL server for tests: initdb into a temporary
// directory (as the unprivileged `postgres` user when the test runs as
// root, since PostgreSQL refuses to run as root), pg_ctl start on a free
// loopback port with its socket in that directory, stopped and removed at
// the end. One server serves every test of a process (Shared()); tests
// isolate themselves with a schema each (NewSchemaUri).
#ifndef FORQ_TESTS_TESTING_POSTGRES_SERVER_H_
#define FORQ_TESTS_TESTING_POSTGRES_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace forq::testing {

class PostgresServer {
 public:
  // The process-wide server, started on first call and stopped at exit.
  static absl::StatusOr<PostgresServer*> Shared();
  // A server owned by the caller. `extra_options` are appended to the
  // server's command line (e.g. "-c fsync=on"; later -c settings win).
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start(
      std::string extra_options = "");
  // pg_ctl stop -m immediate, then removes the directory.
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  // libpq URI of the test database; with `schema`, connections made from it
  // use that schema (search_path).
  std::string Uri(absl::string_view schema = "") const;
  // Creates a fresh schema named <prefix>_<n> and returns Uri(schema).
  absl::StatusOr<std::string> NewSchemaUri(absl::string_view prefix);
  // Runs `sql` on the test database.
  absl::Status Exec(absl::string_view sql) const;
  // Runs the query `sql`; the first column of its first row as text ("" for
  // no row or NULL).
  absl::StatusOr<std::string> Query(absl::string_view sql) const;

  // Stops the server (-m immediate: like a crash, no shutdown checkpoint)
  // and starts it again on the same port and directory.
  absl::Status StopImmediate();
  absl::Status StartAgain();

 private:
  PostgresServer() = default;
  absl::Status Run(const std::vector<std::string>& argv) const;
  absl::Status PgCtlStart();

  std::string bindir_;
  std::string dir_;
  int port_ = 0;
  bool running_ = false;
  int next_schema_ = 0;
  std::string extra_options_;
};

// "--store=<uri>" of a fresh schema on the shared server, for a forqd
// under test.
absl::StatusOr<std::string> PostgresStoreFlag(absl::string_view prefix);

}  // namespace forq::testing

#endif  // FORQ_TESTS_TESTING_POSTGRES_SERVER_H_
