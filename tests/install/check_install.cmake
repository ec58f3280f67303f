# ctest's Install.ConsumerProjectBuildsAgainstTheInstalledPackage: cmake --install the build into
# a fresh prefix, then configure, build and run tests/install/consumer against it.
#   cmake -DBUILD_DIR=... -DSOURCE_DIR=... -DCXX=... [-DPREFIX_PATH=...] [-DGENERATOR=... -DMAKE_PROGRAM=...]
#         -P check_install.cmake
# The consumer uses the build's generator and make program (a machine may have ninja and no make).
set(work ${BUILD_DIR}/install-check)
file(REMOVE_RECURSE ${work})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${work}/prefix)
foreach(f include/diffuse/schedule.h include/diffuse/models/unet.h lib/libdiffuse_core.a bin/diffuse
        lib/cmake/diffuse/diffuseConfig.cmake lib/cmake/diffuse/diffuseTargets.cmake)
  if(NOT EXISTS ${work}/prefix/${f})
    file(GLOB_RECURSE found RELATIVE ${work}/prefix ${work}/prefix/*)
    message(FATAL_ERROR "the install has no ${f}; it has: ${found}")
  endif()
endforeach()
# The build's own compiler and launcher; the prefix first, then wherever LibTorch was found.
set(prefixes "${work}/prefix")
if(PREFIX_PATH)
  string(APPEND prefixes ";${PREFIX_PATH}")
endif()
set(generator)
if(GENERATOR)
  set(generator -G "${GENERATOR}")
  if(MAKE_PROGRAM)
    list(APPEND generator "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
  endif()
endif()
run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/install/consumer -B ${work}/build ${generator} -DCMAKE_CXX_COMPILER=${CXX}
    "-DCMAKE_PREFIX_PATH=${prefixes}" -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${work}/build)
run(${work}/build/consumer)
if(NOT last_output MATCHES "^ok")
  message(FATAL_ERROR "the consumer printed: ${last_output}")
endif()
message(STATUS "consumer built against ${work}/prefix and ran: ${last_output}")
