#!/bin/sh
echo "rs_hashing: 'bazel coverage' is not supported (Bazel's coverage tools are not available offline); use pytest-cov" >&2
exit 1
