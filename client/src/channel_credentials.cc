#include "client/src/channel_credentials.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "grpc/grpc.h"
#include "grpc/grpc_security.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/channel_arguments.h"

namespace forq::client_internal {
namespace {

// grpc::ChannelCredentials over a C-core credentials object: the C++ API
// refuses call credentials (the token) on a plaintext channel, which forqd
// accepts on loopback and behind a TLS-terminating proxy.
class CoreChannelCredentials final : public grpc::ChannelCredentials {
 public:
  explicit CoreChannelCredentials(grpc_channel_credentials* creds)
      : creds_(creds) {}
  ~CoreChannelCredentials() override {
    grpc_channel_credentials_release(creds_);
  }

 protected:
  grpc::SecureChannelCredentials* AsSecureCredentials() override {
    return nullptr;
  }

 private:
  std::shared_ptr<grpc::Channel> CreateChannelImpl(
      const std::string& target, const grpc::ChannelArguments& args) override {
    grpc_channel_args c_args;
    args.SetChannelArgs(&c_args);
    return grpc::CreateChannelInternal(
        "", grpc_channel_create(target.c_str(), creds_, &c_args), {});
  }

  grpc_channel_credentials* const creds_;
};

// Adds "authorization: Bearer TOKEN" to every call, synchronously.
int TokenMetadata(
    void* state, grpc_auth_metadata_context /*context*/,
    grpc_credentials_plugin_metadata_cb /*cb*/, void* /*user_data*/,
    grpc_metadata creds_md[GRPC_METADATA_CREDENTIALS_PLUGIN_SYNC_MAX],
    size_t* num_creds_md, grpc_status_code* status,
    const char** error_details) {
  const auto* value = static_cast<const std::string*>(state);
  creds_md[0].key = grpc_slice_from_static_string("authorization");
  creds_md[0].value =
      grpc_slice_from_copied_buffer(value->data(), value->size());
  *num_creds_md = 1;
  *status = GRPC_STATUS_OK;
  *error_details = nullptr;
  return 1;
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  }
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const ClientOptions& o) {
  const bool tls = o.tls || !o.ca_file.empty() || !o.cert_file.empty() ||
                   !o.key_file.empty();
  if (!tls && o.token.empty()) return grpc::InsecureChannelCredentials();
  if (o.cert_file.empty() != o.key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs both --cert and --key");
  }
  grpc_channel_credentials* channel = nullptr;
  if (tls) {
    std::string ca, cert, key;
    if (!o.ca_file.empty()) {
      absl::StatusOr<std::string> s = ReadPem(o.ca_file, "CA file");
      if (!s.ok()) return s.status();
      ca = std::move(*s);
    }
    if (!o.cert_file.empty()) {
      absl::StatusOr<std::string> s = ReadPem(o.cert_file, "certificate");
      if (!s.ok()) return s.status();
      cert = std::move(*s);
      s = ReadPem(o.key_file, "key");
      if (!s.ok()) return s.status();
      key = std::move(*s);
    }
    grpc_ssl_pem_key_cert_pair pair{key.c_str(), cert.c_str()};
    // Null roots: gRPC's default roots (the system bundle).
    channel = grpc_ssl_credentials_create(ca.empty() ? nullptr : ca.c_str(),
                                          cert.empty() ? nullptr : &pair,
                                          nullptr, nullptr);
  } else {
    channel = grpc_insecure_credentials_create();
  }
  if (!o.token.empty()) {
    grpc_metadata_credentials_plugin plugin;
    plugin.get_metadata = TokenMetadata;
    plugin.debug_string = nullptr;
    // gRPC owns the state from here and frees it through destroy.
    plugin.state = new std::string(absl::StrCat("Bearer ", o.token));
    plugin.destroy = [](void* state) {
      delete static_cast<std::string*>(state);
    };
    plugin.type = "forq.bearer";
    // Security level NONE: forqd also takes tokens on plaintext loopback.
    grpc_call_credentials* call = grpc_metadata_credentials_create_from_plugin(
        plugin, GRPC_SECURITY_NONE, nullptr);
    grpc_channel_credentials* composite =
        grpc_composite_channel_credentials_create(channel, call, nullptr);
    grpc_channel_credentials_release(channel);
    grpc_call_credentials_release(call);
    channel = composite;
  }
  return std::make_shared<CoreChannelCredentials>(channel);
}

}  // namespace forq::client_internal
