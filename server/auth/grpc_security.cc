#include "server/auth/grpc_security.h"

#include <string>

#include "absl/strings/string_view.h"
#include "grpc/grpc.h"
#include "grpc/grpc_security.h"
#include "grpcpp/security/server_credentials.h"
#include "spdlog/spdlog.h"

namespace forq::server {
namespace {

// grpc::ServerCredentials over a C-core credentials object. The C++ API
// offers no way to put an auth metadata processor on plaintext ports or a
// certificate fetcher on TLS ones; the C API does both.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  explicit CoreServerCredentials(grpc_server_credentials* creds)
      : creds_(creds) {}
  ~CoreServerCredentials() override { grpc_server_credentials_release(creds_); }
  // The processor is installed on the C object instead.
  void SetAuthMetadataProcessor(
      const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {}

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* const creds_;
};

absl::string_view View(const grpc_slice& s) {
  return absl::string_view(
      reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)),
      GRPC_SLICE_LENGTH(s));
}

// Runs inline in gRPC's server auth filter, once per call, before the call
// reaches any service.
void ProcessAuth(void* state, grpc_auth_context* /*context*/,
                 const grpc_metadata* md, size_t num_md,
                 grpc_process_auth_metadata_done_cb cb, void* user_data) {
  const auto* tokens = static_cast<const TokenTable*>(state);
  absl::string_view path;
  const grpc_metadata* auth = nullptr;
  int auth_count = 0;
  for (size_t i = 0; i < num_md; ++i) {
    const absl::string_view key = View(md[i].key);
    if (key == ":path") {
      path = View(md[i].value);
    } else if (key == "authorization") {
      auth = &md[i];
      ++auth_count;
    }
  }
  if (auth_count > 1) {
    cb(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED,
       "more than one authorization value");
    return;
  }
  const absl::Status s = tokens->Authorize(
      auth == nullptr ? absl::string_view() : View(auth->value),
      RequiredRole(path), path);
  if (s.ok()) {
    // The authorization entry stays: per-client limits key on the token
    // (ClientKey), which this check has just proven valid.
    cb(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_OK, nullptr);
    return;
  }
  const std::string message(s.message());
  cb(user_data, nullptr, 0, nullptr, 0, static_cast<grpc_status_code>(s.code()),
     message.c_str());
}

void InstallProcessor(grpc_server_credentials* creds,
                      const TokenTable* tokens) {
  if (tokens == nullptr) return;
  grpc_auth_metadata_processor p;
  p.process = ProcessAuth;
  p.destroy = nullptr;
  p.state = const_cast<TokenTable*>(tokens);
  grpc_server_credentials_set_auth_metadata_processor(creds, p);
}

}  // namespace

std::shared_ptr<grpc::ServerCredentials> GrpcServerSecurity::PortCredentials() {
  if (tls_ == nullptr) return PrivatePortCredentials();
  fetch_states_.emplace_back();
  FetchState* state = &fetch_states_.back();
  state->tls = tls_;
  // gRPC asks before each handshake; a new config only after a reload.
  auto fetch = [](void* user_data, grpc_ssl_server_certificate_config** out) {
    auto* st = static_cast<FetchState*>(user_data);
    const uint64_t gen = st->tls->generation();
    if (st->seen.exchange(gen, std::memory_order_acq_rel) == gen) {
      return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    }
    std::shared_ptr<const TlsPems> pems = st->tls->Current();
    grpc_ssl_pem_key_cert_pair pair;
    pair.private_key = pems->key.c_str();
    pair.cert_chain = pems->cert.c_str();
    // gRPC 1.51's fetcher path asserts non-null roots even when no client
    // certificate is requested; the server's own chain is then never used.
    *out = grpc_ssl_server_certificate_config_create(
        pems->client_ca.empty() ? pems->cert.c_str() : pems->client_ca.c_str(),
        &pair, 1);
    return GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
  };
  grpc_ssl_server_credentials_options* opts =
      grpc_ssl_server_credentials_create_options_using_config_fetcher(
          tls_->mutual()
              ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
              : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
          fetch, state);
  grpc_server_credentials* creds =
      grpc_ssl_server_credentials_create_with_options(opts);
  InstallProcessor(creds, tokens_);
  return std::make_shared<CoreServerCredentials>(creds);
}

std::shared_ptr<grpc::ServerCredentials>
GrpcServerSecurity::PrivatePortCredentials() {
  if (tokens_ == nullptr) return grpc::InsecureServerCredentials();
  grpc_server_credentials* creds = grpc_insecure_server_credentials_create();
  InstallProcessor(creds, tokens_);
  return std::make_shared<CoreServerCredentials>(creds);
}

}  // namespace forq::server
