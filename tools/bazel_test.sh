#!/usr/bin/env bash
# Runs Bazel tests of rs_hashing from any checkout location.
#
#   make venv                                 # once: .venv with TensorFlow, Keras, pytest
#   tools/bazel_test.sh                       # every test target (slow tests deselected)
#   tools/bazel_test.sh //:data_loaders_test  # some targets; any other `bazel test` flag
#                                             # works too, e.g. --test_output=all
#
# Needs Bazel 4.2 (Debian: apt-get install bazel-bootstrap); nothing is downloaded.
# Plain `bazel test //...` works as well: the interpreter is <checkout>/.venv/bin/python
# through //:venv_python_toolchain. This script adds the RSICD benchmark folder
# (<checkout>/../shared/data/rsicd, or $RS_HASHING_RSICD) when it exists, so the tests
# that need real data run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/python ]]; then
    echo "tools/bazel_test.sh: $PWD/.venv/bin/python not found; run 'make venv' first" >&2
    exit 1
fi
if ! command -v bazel >/dev/null; then
    echo "tools/bazel_test.sh: bazel not found; install Bazel 4.2 (Debian: apt-get install bazel-bootstrap)" >&2
    exit 1
fi

rsicd="${RS_HASHING_RSICD:-$PWD/../shared/data/rsicd}"
if [[ -f "$rsicd/dataset_rsicd.json" ]]; then
    # .bazelrc passes RS_HASHING_RSICD on to the tests (--test_env).
    export RS_HASHING_RSICD="$(cd "$rsicd" && pwd)"
fi

# No target pattern among the arguments (none, or only flags): test everything.
has_target=false
for arg in "$@"; do
    [[ "$arg" != -* ]] && has_target=true
done
if [[ "$has_target" == false ]]; then
    set -- "$@" //...
fi
exec bazel test "$@"
