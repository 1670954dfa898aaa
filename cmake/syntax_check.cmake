# Writes BUILD_DIR/syntax_check.ninja: one clang front-end run per forq
# source file listed in BUILD_DIR/compile_commands.json (make check). Each
# run touches a stamp, and its -MD depfile lets ninja redo only what changed.
# Ninja's own build graph is not used because order-only dependencies
# (add_dependencies on forqd) would try to link, which -fsyntax-only cannot.
# Usage: cmake -DSOURCE_DIR=... -DBUILD_DIR=... -P syntax_check.cmake
file(READ "${BUILD_DIR}/compile_commands.json" db)
string(JSON count LENGTH "${db}")
math(EXPR last "${count} - 1")
set(out "rule check\n  command = cd $dir && $cmd -MD -MF $dep && touch $out\n")
string(APPEND out "  depfile = $dep\n  deps = gcc\n  description = CHECK $src\n")
set(n 0)
foreach(i RANGE ${last})
  string(JSON file GET "${db}" ${i} file)
  cmake_path(RELATIVE_PATH file BASE_DIRECTORY "${SOURCE_DIR}"
    OUTPUT_VARIABLE rel)
  # forq's own sources only: not generated code, not other build trees.
  if(NOT rel MATCHES "^(common|worker|server|client|tests|bench|examples)/")
    continue()
  endif()
  string(JSON dir GET "${db}" ${i} directory)
  string(JSON cmd GET "${db}" ${i} command)
  if(NOT cmd MATCHES " -o ([^ ]+)")
    message(FATAL_ERROR "no -o in the compile command of ${file}")
  endif()
  set(obj "${CMAKE_MATCH_1}")
  string(REPLACE "$" "$$" cmd "${cmd}")
  string(REPLACE "$" "$$" dir "${dir}")
  string(REPLACE ":" "$:" stamp_src "${file}")
  string(APPEND out "build syntax_check/${obj}.stamp: check ${stamp_src}\n")
  string(APPEND out "  dir = ${dir}\n  cmd = ${cmd}\n  dep = ${obj}.d\n")
  string(APPEND out "  src = ${rel}\n")
  math(EXPR n "${n} + 1")
endforeach()
if(n EQUAL 0)
  message(FATAL_ERROR "no forq sources in ${BUILD_DIR}/compile_commands.json")
endif()
file(WRITE "${BUILD_DIR}/syntax_check.ninja" "${out}")
message(STATUS "syntax_check.ninja: ${n} forq source files")
