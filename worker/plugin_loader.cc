#include "worker/plugin_loader.h"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"

namespace forq::worker {

absl::Status LoadPlugin(const std::string& path, HandlerRegistry& registry) {
  // dlerror() state is per thread; clear it so a stale message is not
  // reported for this call.
  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* err = dlerror();
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot load plugin '", path, "': ", err != nullptr ? err : "unknown"));
  }
  void* sym = dlsym(handle, kPluginEntryPoint);
  if (sym == nullptr) {
    dlclose(handle);
    return absl::InvalidArgumentError(absl::StrCat(
        "plugin '", path, "' does not export ", kPluginEntryPoint));
  }
  auto fn = reinterpret_cast<ForqRegisterHandlersFn>(sym);
  if (int rc = fn(&registry); rc != 0) {
    // Handlers it registered before failing may point into it: keep it.
    return absl::InvalidArgumentError(absl::StrCat(
        "plugin '", path, "': ", kPluginEntryPoint, " returned ", rc));
  }
  return absl::OkStatus();
}

}  // namespace forq::worker
