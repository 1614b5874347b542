# Run by ctest after the tests (build/CTestCustom.cmake, written by tests/CMakeLists.txt): prints why
# the programs reported as "Skipped" skipped what they did (catch_main.cpp writes NOTES/<program>).
file(GLOB notes "${NOTES}/*")
set(text "")
foreach(note IN LISTS notes)
  file(READ "${note}" reasons)
  string(APPEND text "${reasons}")
endforeach()
if(text)
  message("\nSkipped, and why:\n${text}")
endif()
