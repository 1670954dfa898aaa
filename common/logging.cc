#include "common/logging.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace forq {

absl::Status InitLogging(absl::string_view component, absl::string_view level) {
  const spdlog::level::level_enum lvl =
      spdlog::level::from_str(std::string(level));
  if (lvl == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown log level '", level,
                     "' (want trace, debug, info, warn, error or off)"));
  }
  auto logger = spdlog::stderr_color_mt(std::string(component));
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %^%L%$ %n[%P] %v",
                      spdlog::pattern_time_type::utc);
  logger->set_level(lvl);
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

}  // namespace forq
