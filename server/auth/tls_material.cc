#include "server/auth/tls_material.h"

#include <fstream>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

namespace forq::server {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read ", what, " ", path));
  }
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no PEM data";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

// Number of certificates in `pem`, or an error naming `path`.
absl::StatusOr<int> CountCerts(const std::string& pem,
                               const std::string& path) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  absl::Cleanup free_bio = [bio] { BIO_free(bio); };
  int n = 0;
  while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    X509_free(x);
    ++n;
  }
  ERR_clear_error();
  if (n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds no PEM certificate"));
  }
  return n;
}

}  // namespace

absl::StatusOr<TlsPems> ReadTlsPems(const TlsFiles& files) {
  if (files.cert_file.empty() || files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both --tls_cert and --tls_key");
  }
  TlsPems p;
  absl::StatusOr<std::string> s = ReadFile(files.cert_file, "--tls_cert");
  if (!s.ok()) return s.status();
  p.cert = std::move(*s);
  s = ReadFile(files.key_file, "--tls_key");
  if (!s.ok()) return s.status();
  p.key = std::move(*s);
  if (!files.client_ca_file.empty()) {
    s = ReadFile(files.client_ca_file, "--tls_client_ca");
    if (!s.ok()) return s.status();
    p.client_ca = std::move(*s);
    absl::StatusOr<int> n = CountCerts(p.client_ca, files.client_ca_file);
    if (!n.ok()) return n.status();
  }
  absl::StatusOr<int> n = CountCerts(p.cert, files.cert_file);
  if (!n.ok()) return n.status();

  BIO* cert_bio =
      BIO_new_mem_buf(p.cert.data(), static_cast<int>(p.cert.size()));
  X509* cert = PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr);
  BIO_free(cert_bio);
  absl::Cleanup free_cert = [cert] { X509_free(cert); };
  BIO* key_bio = BIO_new_mem_buf(p.key.data(), static_cast<int>(p.key.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr);
  BIO_free(key_bio);
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        files.key_file, " holds no usable PEM private key: ", OpenSslError()));
  }
  absl::Cleanup free_key = [key] { EVP_PKEY_free(key); };
  if (X509_check_private_key(cert, key) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat(files.key_file, " is not the key of the certificate in ",
                     files.cert_file));
  }
  return p;
}

absl::StatusOr<std::unique_ptr<TlsMaterial>> TlsMaterial::Load(TlsFiles files) {
  std::unique_ptr<TlsMaterial> m(new TlsMaterial(std::move(files)));
  absl::Status s = m->Reload();
  if (!s.ok()) return s;
  return m;
}

absl::Status TlsMaterial::Reload() {
  absl::StatusOr<TlsPems> p = ReadTlsPems(files_);
  if (!p.ok()) return p.status();
  {
    MutexLock lock(&mu_);
    pems_ = std::make_shared<const TlsPems>(*std::move(p));
  }
  generation_.fetch_add(1, std::memory_order_release);
  return absl::OkStatus();
}

std::shared_ptr<const TlsPems> TlsMaterial::Current() const {
  MutexLock lock(&mu_);
  return pems_;
}

}  // namespace forq::server
