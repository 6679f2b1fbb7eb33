#!/bin/sh
# The Python interpreter of every Bazel py_binary/py_test: <checkout>/.venv/bin/python.
#
# Bazel 4 only accepts an absolute interpreter_path, which would tie BUILD to one
# checkout location. Instead this script is the toolchain's interpreter: Bazel places a
# symlink to it in each runfiles tree, and resolving that symlink leads back to the
# source checkout, whose .venv holds TensorFlow, Keras and pytest (`make venv`).
# RS_HASHING_PYTHON (passed with --test_env, or set for `bazel run`) overrides it.
set -eu
python="${RS_HASHING_PYTHON:-}"
if [ -z "$python" ]; then
    self="$(readlink -f "$0")"
    python="$(dirname "$(dirname "$self")")/.venv/bin/python"
fi
if [ ! -x "$python" ]; then
    echo "tools/venv_python.sh: no Python interpreter at $python; run 'make venv' in the checkout first" >&2
    exit 1
fi

# `bazel run` starts binaries inside their runfiles tree; go back to where the command
# was typed so relative flags (--workdir=runs/demo) mean what they mean for
# `python -m train.demo`. Bazel's launcher passes absolute paths, so this is safe.
if [ -n "${BUILD_WORKING_DIRECTORY:-}" ]; then
    cd "$BUILD_WORKING_DIRECTORY"
fi

# Bazel runs the main file as a script, which puts the script's folder first on
# sys.path: train/train.py would then be imported as the package `train` and hide it.
# -P (Python 3.11+) leaves that folder out, so imports resolve as under `python -m`;
# the packages are on PYTHONPATH through the targets' `imports`.
if "$python" -I -S -P -c "" 2>/dev/null; then
    exec "$python" -P "$@"
fi
exec "$python" "$@"
