"""Offline stand-in for @rules_cc//cc:defs.bzl under Bazel 4.2.

Bazel 4's built-in @bazel_tools//tools/cpp package loads the C++ rule names from
@rules_cc, which Bazel would otherwise download (and Debian's bazel-rules-cc 0.0.4 needs
a newer Bazel). Every Python target resolves the C++ toolchain, so without this stand-in
no py_test can even be analysed offline. It forwards each name to Bazel's native rule,
which is all rules_cc itself did for Bazel 4. rs_hashing has no C++ code.
"""

def cc_binary(**attrs):
    native.cc_binary(**attrs)

def cc_import(**attrs):
    native.cc_import(**attrs)

def cc_library(**attrs):
    native.cc_library(**attrs)

def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)

def cc_test(**attrs):
    native.cc_test(**attrs)

def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)

def fdo_prefetch_hints(**attrs):
    native.fdo_prefetch_hints(**attrs)

def fdo_profile(**attrs):
    native.fdo_profile(**attrs)

def objc_import(**attrs):
    native.objc_import(**attrs)

def objc_library(**attrs):
    native.objc_library(**attrs)
