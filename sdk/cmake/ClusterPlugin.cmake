# cluster_add_plugin(<name> <sources>...): an entity plugin, a MODULE library that links only
# the SDK (cluster::sdk), hides its symbols and refuses undefined ones. The one definition,
# included by this repository's build and by the installed ClusterSDK package alike.
function(cluster_add_plugin name)
  if(NOT ARGN)
    message(FATAL_ERROR "cluster_add_plugin(${name}): no source files given")
  endif()
  add_library(${name} MODULE ${ARGN})
  target_link_libraries(${name} PRIVATE cluster::sdk)
  set_target_properties(${name} PROPERTIES
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  target_link_options(${name} PRIVATE -Wl,--no-undefined)
endfunction()
