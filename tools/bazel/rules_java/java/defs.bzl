"""Offline stand-in for @rules_java//java:defs.bzl under Bazel 4.2.

Bazel 4 registers its built-in Java toolchains for every build, and their package
(@bazel_tools//tools/jdk) loads the Java rule names from @rules_java, which Bazel would
otherwise download. This stand-in forwards each name to Bazel's native rule, which is
all rules_java itself did for Bazel 4. rs_hashing has no Java code.
"""

def java_binary(**attrs):
    native.java_binary(**attrs)

def java_import(**attrs):
    native.java_import(**attrs)

def java_library(**attrs):
    native.java_library(**attrs)

def java_lite_proto_library(**attrs):
    native.java_lite_proto_library(**attrs)

def java_proto_library(**attrs):
    native.java_proto_library(**attrs)

def java_runtime(**attrs):
    native.java_runtime(**attrs)

def java_test(**attrs):
    native.java_test(**attrs)

def java_toolchain(**attrs):
    native.java_toolchain(**attrs)
