"""pytest_test: one native py_test that runs one pytest file through tools/pytest_runner.py."""

def pytest_test(name, src, helpers = [], deps = [], data = [], args = [], size = "medium", **kwargs):
    """A py_test running the pytest file `src` (e.g. tests/data/loaders_test.py).

    The suite is pytest-style, so the py_test's `main` is the shared runner and the test
    file travels as a source and as the runner's first argument.

    Args:
      name: target name, the file's path under tests/ with "/" turned into "_"
        (tests/data/loaders_test.py -> data_loaders_test); tests/build_file_test.py
        checks this.
      src: the *_test.py file, relative to the repository root.
      helpers: other test files this one imports from (`from tests.models.foo_test
        import write_arrays`); they travel as sources but are not run. Shared helpers
        belong in tests/testing.py, which every test gets.
      deps: extra Python dependencies beyond those every test gets: the package, the
        train/ and export/ modules (end-to-end tests run the entry points) and the
        shared test helpers.
      data: extra runfiles.
      args: extra pytest arguments, after the file.
      size: Bazel test size; "medium" (300 s) leaves room for TensorFlow's import on a
        busy machine.
      **kwargs: passed to py_test (timeout, tags, shard_count, ...).
    """
    native.py_test(
        name = name,
        srcs = ["//:tools/pytest_runner.py", src] + helpers,
        main = "//:tools/pytest_runner.py",
        args = ["$(rootpath %s)" % src] + args,
        deps = ["//:rs_hashing", "//:entry_point_lib", "//:test_helpers"] + deps,
        data = ["//:pytest_config"] + data,
        python_version = "PY3",
        srcs_version = "PY3",
        size = size,
        **kwargs
    )
