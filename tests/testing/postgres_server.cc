#include "tests/testing/postgres_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "common/errno_status.h"
#include "tests/testing/forqd_process.h"

#include <libpq-fe.h>

namespace forq::testing {
namespace {

constexpr const char* kRunAsUser = "postgres";

// Directory of initdb/pg_ctl: $FORQ_PG_BINDIR, else the newest
// /usr/lib/postgresql/<version>/bin (Debian), else $PATH.
std::string FindBindir() {
  if (const char* env = getenv("FORQ_PG_BINDIR"); env != nullptr && *env) {
    return env;
  }
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    if (std::filesystem::exists(entry.path() / "bin" / "initdb")) {
      found.push_back((entry.path() / "bin").string());
    }
  }
  if (found.empty()) return "";
  // "9.6" < "15": compare as numbers.
  std::sort(
      found.begin(), found.end(),
      [](const std::string& a, const std::string& b) {
        return atof(std::filesystem::path(a).parent_path().filename().c_str()) <
               atof(std::filesystem::path(b).parent_path().filename().c_str());
      });
  return found.back();
}

absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoToStatus(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoToStatus(err, "bind 127.0.0.1:0");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::string FileTail(const std::string& path, size_t max_bytes = 4000) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > max_bytes) text = text.substr(text.size() - max_bytes);
  return text;
}

}  // namespace

absl::StatusOr<PostgresServer*> PostgresServer::Shared() {
  static absl::StatusOr<PostgresServer*>* shared = [] {
    auto* result =
        new absl::StatusOr<PostgresServer*>(absl::InternalError("not started"));
    absl::StatusOr<std::unique_ptr<PostgresServer>> server = Start();
    if (!server.ok()) {
      *result = server.status();
    } else {
      *result = server->release();
      std::atexit([] {
        absl::StatusOr<PostgresServer*> s = PostgresServer::Shared();
        if (s.ok()) delete *s;
      });
    }
    return result;
  }();
  return *shared;
}

absl::Status PostgresServer::Run(const std::vector<std::string>& argv) const {
  std::vector<std::string> full;
  if (geteuid() == 0) {
    // setpriv execs the command as the user; runuser would stay its parent
    // and, when the two are stopped and continued together (SIGSTOP and
    // SIGCONT of all the test's processes), stop itself again on seeing
    // its child's stop, with nobody left to continue it.
    full = {"/usr/bin/setpriv", absl::StrCat("--reuid=", kRunAsUser),
            absl::StrCat("--regid=", kRunAsUser), "--init-groups", "--"};
  }
  full.insert(full.end(), argv.begin(), argv.end());
  absl::StatusOr<CommandResult> result =
      RunCommand(full, "", absl::Seconds(60));
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return absl::InternalError(
        absl::StrCat(absl::StrJoin(argv, " "), " exited ", result->exit_code,
                     ": ", result->err, result->out, "\nserver log:\n",
                     FileTail(dir_ + "/postgres.log")));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start(
    std::string extra_options) {
  std::unique_ptr<PostgresServer> server(new PostgresServer());
  server->extra_options_ = std::move(extra_options);
  server->bindir_ = FindBindir();
  if (server->bindir_.empty()) {
    return absl::FailedPreconditionError(
        "PostgreSQL server binaries not found (install postgresql-15, or set "
        "FORQ_PG_BINDIR)");
  }
  server->dir_ = MakeTempDir("forq-pg");
  if (server->dir_.empty()) return ErrnoToStatus(errno, "mkdtemp");
  if (geteuid() == 0) {
    passwd entry{};
    passwd* pw = nullptr;
    std::array<char, 4096> buf{};
    getpwnam_r(kRunAsUser, &entry, buf.data(), buf.size(), &pw);
    if (pw == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("running as root and there is no \"", kRunAsUser,
                       "\" user to run PostgreSQL as (install postgresql-15)"));
    }
    if (chown(server->dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("chown ", server->dir_));
    }
  }
  const std::string data = server->dir_ + "/data";
  // Trust on loopback and the private socket only; fsync off because the
  // tests never cut the machine's power (a killed backend or a crash of
  // the server still loses nothing committed).
  absl::Status s = server->Run({server->bindir_ + "/initdb", "-D", data, "-U",
                                "forq", "--auth=trust", "--no-sync", "-E",
                                "UTF8", "--locale=C", "--no-instructions"});
  if (!s.ok()) return s;
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<int> port = FreeLoopbackPort();
    if (!port.ok()) return port.status();
    server->port_ = *port;
    s = server->PgCtlStart();
    if (s.ok()) break;
    // Another process may have taken the port between probe and start.
    if (attempt == 2) return s;
  }
  PGconn* conn = PQconnectdb(
      absl::StrCat("postgresql://forq@127.0.0.1:", server->port_, "/postgres")
          .c_str());
  absl::Status created;
  if (PQstatus(conn) != CONNECTION_OK) {
    created = absl::UnavailableError(PQerrorMessage(conn));
  } else {
    PGresult* res = PQexec(conn, "CREATE DATABASE forq");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
      created = absl::InternalError(PQresultErrorMessage(res));
    }
    PQclear(res);
  }
  PQfinish(conn);
  if (!created.ok()) return created;
  return server;
}

absl::Status PostgresServer::PgCtlStart() {
  absl::Status s =
      Run({bindir_ + "/pg_ctl", "-D", dir_ + "/data", "-l",
           dir_ + "/postgres.log", "-w", "-t", "60", "-o",
           absl::StrCat("-p ", port_, " -k ", dir_,
                        " -c listen_addresses=127.0.0.1 -c fsync=off"
                        " -c full_page_writes=off -c max_connections=300 ",
                        extra_options_),
           "start"});
  running_ = s.ok();
  return s;
}

PostgresServer::~PostgresServer() {
  if (running_) {
    (void)Run({bindir_ + "/pg_ctl", "-D", dir_ + "/data", "-m", "immediate",
               "-w", "stop"});
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

absl::Status PostgresServer::StopImmediate() {
  absl::Status s = Run({bindir_ + "/pg_ctl", "-D", dir_ + "/data", "-m",
                        "immediate", "-w", "stop"});
  if (s.ok()) running_ = false;
  return s;
}

absl::Status PostgresServer::StartAgain() { return PgCtlStart(); }

std::string PostgresServer::Uri(absl::string_view schema) const {
  std::string uri =
      absl::StrCat("postgresql://forq@127.0.0.1:", port_, "/forq");
  if (!schema.empty()) {
    absl::StrAppend(&uri, "?options=-csearch_path%3D", schema);
  }
  return uri;
}

absl::Status PostgresServer::Exec(absl::string_view sql) const {
  PGconn* conn = PQconnectdb(Uri().c_str());
  absl::Status status;
  if (PQstatus(conn) != CONNECTION_OK) {
    status = absl::UnavailableError(PQerrorMessage(conn));
  } else {
    PGresult* res = PQexec(conn, std::string(sql).c_str());
    const ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      status = absl::InternalError(
          absl::StrCat(sql, ": ", PQresultErrorMessage(res)));
    }
    PQclear(res);
  }
  PQfinish(conn);
  return status;
}

absl::StatusOr<std::string> PostgresServer::Query(absl::string_view sql) const {
  PGconn* conn = PQconnectdb(Uri().c_str());
  absl::StatusOr<std::string> out;
  if (PQstatus(conn) != CONNECTION_OK) {
    out = absl::UnavailableError(PQerrorMessage(conn));
  } else {
    PGresult* res = PQexec(conn, std::string(sql).c_str());
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
      out = absl::InternalError(
          absl::StrCat(sql, ": ", PQresultErrorMessage(res)));
    } else if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0)) {
      out = std::string();
    } else {
      out = std::string(PQgetvalue(res, 0, 0));
    }
    PQclear(res);
  }
  PQfinish(conn);
  return out;
}

absl::StatusOr<std::string> PostgresServer::NewSchemaUri(
    absl::string_view prefix) {
  const std::string schema =
      absl::StrCat(prefix, "_", getpid(), "_", next_schema_++);
  absl::Status s = Exec(absl::StrCat("CREATE SCHEMA ", schema));
  if (!s.ok()) return s;
  return Uri(schema);
}

absl::StatusOr<std::string> PostgresStoreFlag(absl::string_view prefix) {
  absl::StatusOr<PostgresServer*> server = PostgresServer::Shared();
  if (!server.ok()) return server.status();
  absl::StatusOr<std::string> uri = (*server)->NewSchemaUri(prefix);
  if (!uri.ok()) return uri.status();
  return absl::StrCat("--store=", *uri);
}

}  // namespace forq::testing
