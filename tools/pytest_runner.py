"""Runs one pytest file as a Bazel py_test (the `main` of every test made by pytest_test).

Usage (Bazel passes the file through the target's `args`):
    pytest_runner.py tests/data/loaders_test.py [extra pytest args ...]

The suite is pytest-style (plain functions, fixtures such as tmp_path), which Bazel's
py_test cannot run by itself. This runner gives pytest the Bazel test conventions:
  * `-m "not slow"` like `make test`; `bazel test --config=slow` (.bazelrc) appends
    `-m slow`, which wins, to run the slow ones instead;
  * results go to $XML_OUTPUT_FILE (JUnit XML) and temporary files under $TEST_TMPDIR;
  * `bazel test --test_filter=EXPR` becomes `-k EXPR`;
  * no .pyc or .pytest_cache written into the (read-only) runfiles tree;
  * HOME, which Bazel leaves unset (Python then falls back to the read-only real home
    inside the sandbox), becomes a fresh $TEST_TMPDIR/home, so Keras' config file and
    any cache a test builds under ~ land in a writable per-test folder. An explicit
    `--test_env=HOME=...` still wins.

Exit status: pytest's, except for 5 ("no tests collected"). A file that defines no tests
at all is almost always a mistake (a misspelt test name, a broken `python_files`
pattern), so it fails. But 5 is also what pytest returns when every test was deselected
(a file of slow tests under `-m "not slow"`, a --test_filter that matches elsewhere) or
when the whole module was skipped at collection (`pytest.importorskip("torch")`, a
module-level skip): those are legitimate and pass, as a file of skipped tests does.
"""

from __future__ import annotations

import os
import sys

# Set before pytest imports the test modules: the runfiles tree is a forest of symlinks
# into the source checkout and must not gain __pycache__ folders.
sys.dont_write_bytecode = True

import pytest  # noqa: E402  (must follow the bytecode switch)

NO_TESTS_COLLECTED = 5


class _CollectionTally:
    """pytest plugin counting tests dropped legitimately before running."""

    def __init__(self) -> None:
        self.deselected = 0
        self.skipped_collectors = 0

    def pytest_deselected(self, items) -> None:
        self.deselected += len(items)

    def pytest_collectreport(self, report) -> None:
        # A module skipped as a whole is a skipped collect report, not a skipped test.
        if report.skipped:
            self.skipped_collectors += 1


def pytest_args(test_file: str, extra: list[str], environ: dict[str, str]) -> list[str]:
    """The pytest command line for one test file under Bazel's test environment."""
    args = [test_file, "-q", "-m", "not slow", "-p", "no:cacheprovider"]
    if environ.get("XML_OUTPUT_FILE"):
        args.append("--junitxml=" + environ["XML_OUTPUT_FILE"])
    if environ.get("TEST_TMPDIR"):
        # pytest empties --basetemp first, so give it its own sub-folder.
        args.append("--basetemp=" + os.path.join(environ["TEST_TMPDIR"], "pytest"))
    if environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", environ["TESTBRIDGE_TEST_ONLY"]]
    return args + extra


def test_home(environ: dict[str, str]) -> str | None:
    """The HOME to give the tests, or None to keep the current one."""
    if environ.get("HOME") or not environ.get("TEST_TMPDIR"):
        return None
    return os.path.join(environ["TEST_TMPDIR"], "home")


def exit_status(pytest_status: int, tally: _CollectionTally, test_file: str) -> int:
    """Bazel's pass/fail for a pytest exit status (see the module docstring)."""
    if pytest_status != NO_TESTS_COLLECTED:
        return int(pytest_status)
    if tally.deselected or tally.skipped_collectors:
        print(f"pytest_runner: no test of {test_file} ran ({tally.deselected} deselected, "
              f"{tally.skipped_collectors} module(s) skipped); counted as passed")
        return 0
    print(f"pytest_runner: {test_file} defines no pytest tests (no `test_*` functions "
          "or `Test*` classes were collected); failing", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[1].endswith(".py"):
        print("usage: pytest_runner.py TEST_FILE.py [pytest args ...]", file=sys.stderr)
        return 2
    test_file = argv[1]
    if not os.path.isfile(test_file):
        print(f"pytest_runner: test file {test_file} not found in {os.getcwd()}", file=sys.stderr)
        return 2
    home = test_home(dict(os.environ))
    if home:
        # Before pytest imports the test module, hence Keras and TensorFlow.
        os.makedirs(home, exist_ok=True)
        os.environ["HOME"] = home
    tally = _CollectionTally()
    status = pytest.main(pytest_args(test_file, argv[2:], dict(os.environ)), plugins=[tally])
    return exit_status(status, tally, test_file)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
