// Loading of handler plugins: a shared object exporting
// forq_register_handlers (see handler.h), dlopen'ed before any fork so every
// worker inherits its handlers.
#ifndef FORQ_WORKER_PLUGIN_LOADER_H_
#define FORQ_WORKER_PLUGIN_LOADER_H_

#include <string>

#include "absl/status/status.h"

#include "worker/handler.h"

namespace forq::worker {

// dlopens `path` (RTLD_NOW | RTLD_LOCAL) and calls its entry point with
// `registry`. InvalidArgument naming the path if the file cannot be loaded,
// lacks the entry point, or the entry point returns non-zero. The library
// stays loaded for the life of the process: registered handlers point into
// it.
absl::Status LoadPlugin(const std::string& path, HandlerRegistry& registry);

}  // namespace forq::worker

#endif  // FORQ_WORKER_PLUGIN_LOADER_H_
