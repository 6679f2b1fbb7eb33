"""Keeps the Bazel BUILD file in step with the tree (text parsing only; no Bazel needed).

Under Bazel the runfiles tree holds BUILD and, through a glob in the target's `data`,
every test file and entry point, so the same checks run there and under plain pytest.
"""

from __future__ import annotations

import collections
import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_PATH = os.path.join(REPO_ROOT, "BUILD")
ENTRY_POINT_DIRS = ("train", "export")

# Rules whose targets this test tracks; pytest_test is the macro in tools/pytest_test.bzl
# that expands to one native py_test.
_RULES = ("pytest_test", "py_test", "py_binary")
_CALL_START = re.compile(r"^(%s)\(" % "|".join(_RULES), re.MULTILINE)
_STRING_ATTR = r'\b%s\s*=\s*"([^"]*)"'
_LIST_ATTR = r"\b%s\s*=\s*\[([^\]]*)\]"


Target = collections.namedtuple("Target", ["rule", "name", "main", "srcs", "helpers"],
                                defaults=[()])


def _strip_comments(text: str) -> str:
    # BUILD strings here never contain "#", so everything after one is a comment.
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _call_body(text: str, open_paren: int) -> str:
    """The text between the parenthesis at `open_paren` and its match."""
    depth, in_string = 0, False
    for i in range(open_paren, len(text)):
        char = text[i]
        if char == '"':
            in_string = not in_string
        elif not in_string and char in "([{":
            depth += 1
        elif not in_string and char in ")]}":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1:i]
    raise ValueError(f"BUILD: unbalanced parentheses in the call at offset {open_paren}")


def parse_targets(build_text: str) -> list[Target]:
    """Top-level pytest_test/py_test/py_binary calls of a BUILD file.

    `main` is the file the target runs: `src` for pytest_test, else `main`, else the only
    entry of `srcs`. `srcs` lists every quoted file in `srcs`/`src`; `helpers` those in
    pytest_test's `helpers` (other test files it imports from).
    """
    text = _strip_comments(build_text)
    targets = []
    for match in _CALL_START.finditer(text):
        body = _call_body(text, match.end() - 1)
        name = re.search(_STRING_ATTR % "name", body)
        if not name:
            raise ValueError(f"BUILD: a {match.group(1)} call has no name: {body.strip()[:80]}")
        srcs = []
        src = re.search(_STRING_ATTR % "src", body)
        if src:
            srcs.append(src.group(1))
        listed = re.search(_LIST_ATTR % "srcs", body)
        if listed:
            srcs += re.findall(r'"([^"]*)"', listed.group(1))
        main = re.search(_STRING_ATTR % "main", body)
        if src:
            main_file = src.group(1)
        elif main:
            main_file = main.group(1)
        else:
            main_file = srcs[0] if len(srcs) == 1 else None
        helpers = re.search(_LIST_ATTR % "helpers", body)
        helper_files = tuple(re.findall(r'"([^"]*)"', helpers.group(1))) if helpers else ()
        targets.append(Target(match.group(1), name.group(1), main_file, tuple(srcs), helper_files))
    return targets


def expected_test_name(path: str) -> str:
    """tests/data/loaders_test.py -> data_loaders_test."""
    relative = os.path.relpath(path, "tests")
    return os.path.splitext(relative)[0].replace(os.sep, "_").replace("/", "_")


def expected_binary_name(path: str) -> str:
    """train/demo.py -> train_demo (a bare "train" would clash with the train/ folder);
    a package's __main__.py is named after the package (rs_hashing/cli -> rs_hashing_cli)."""
    stem = os.path.splitext(path)[0].replace(os.sep, "/")
    stem = stem[:-len("/__main__")] if stem.endswith("/__main__") else stem
    return stem.replace("/", "_")


def imported_test_files(source: str) -> list[str]:
    """Other test files a test module imports (`from tests.models.foo_test import x`)."""
    modules = re.findall(r"^\s*(?:from|import)\s+(tests(?:\.\w+)*_test)\b", source, re.MULTILINE)
    for package, names in re.findall(r"^\s*from\s+(tests(?:\.\w+)*)\s+import\s+\(?([\w, ]+)",
                                     source, re.MULTILINE):
        modules += [f"{package}.{n.strip()}" for n in names.split(",") if n.strip().endswith("_test")]
    return sorted({m.replace(".", "/") + ".py" for m in modules})


def _repo_files(pattern_dir: str, suffix: str, recursive: bool) -> list[str]:
    found = []
    top = os.path.join(REPO_ROOT, pattern_dir)
    for dirpath, _, filenames in os.walk(top):
        for filename in filenames:
            if filename.endswith(suffix):
                found.append(os.path.relpath(os.path.join(dirpath, filename), REPO_ROOT))
        if not recursive:
            break
    return sorted(path.replace(os.sep, "/") for path in found)


def find_test_files() -> list[str]:
    return _repo_files("tests", "_test.py", recursive=True)


def entry_points() -> list[str]:
    """train/*.py and export/*.py that run a command (define main(), call app.run or
    rs_hashing.cli.run_command)."""
    points = []
    for directory in ENTRY_POINT_DIRS:
        for path in _repo_files(directory, ".py", recursive=False):
            with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
                source = f.read()
            if (re.search(r"^def main\(", source, re.MULTILINE) or "app.run(" in source
                    or "run_command(" in source):
                points.append(path)
    return points


@pytest.fixture(scope="module")
def targets() -> list[Target]:
    with open(BUILD_PATH, encoding="utf-8") as f:
        return parse_targets(f.read())


def _test_targets(targets):
    return [t for t in targets if t.rule in ("pytest_test", "py_test")]


def test_parser_reads_targets_from_hand_written_build():
    build = '''
load("//:tools/pytest_test.bzl", "pytest_test")
# pytest_test(name = "commented_out", src = "tests/gone_test.py")
pytest_test(
    name = "data_loaders_test",
    src = "tests/data/loaders_test.py",  # trailing comment
    data = glob(["tests/**/*.py"]),
)
pytest_test(
    name = "models_image_encoder_test",
    src = "tests/models/image_encoder_test.py",
    helpers = ["tests/models/torch_state_dict_test.py"],
)
py_test(name = "plain_test", srcs = ["tools/runner.py", "tests/plain_test.py"],
        main = "tools/runner.py")
py_binary(
    name = "train",
    srcs = ["train/train.py"],
    deps = [":rs_hashing"],
)
'''
    assert parse_targets(build) == [
        Target("pytest_test", "data_loaders_test", "tests/data/loaders_test.py",
               ("tests/data/loaders_test.py",)),
        Target("pytest_test", "models_image_encoder_test", "tests/models/image_encoder_test.py",
               ("tests/models/image_encoder_test.py",), ("tests/models/torch_state_dict_test.py",)),
        Target("py_test", "plain_test", "tools/runner.py",
               ("tools/runner.py", "tests/plain_test.py")),
        Target("py_binary", "train", "train/train.py", ("train/train.py",)),
    ]


def test_parser_rejects_unbalanced_call():
    with pytest.raises(ValueError, match="unbalanced"):
        parse_targets('pytest_test(name = "x", src = "tests/x_test.py"\n')


def test_expected_test_name():
    assert expected_test_name("tests/config_test.py") == "config_test"
    assert expected_test_name("tests/data/loaders_test.py") == "data_loaders_test"
    assert expected_test_name("tests/models/heads/hash_head_test.py") == "models_heads_hash_head_test"


def test_imported_test_files():
    source = ("import os\nfrom tests import testing\n"
              "from tests.models.torch_state_dict_test import write_arrays\n"
              "    import tests.data.loaders_test\nfrom tests.losses import (nt_xent_test, other)\n")
    assert imported_test_files(source) == [
        "tests/data/loaders_test.py", "tests/losses/nt_xent_test.py", "tests/models/torch_state_dict_test.py"]


def test_expected_binary_name():
    assert expected_binary_name("train/demo.py") == "train_demo"
    assert expected_binary_name("export/export_tflite.py") == "export_export_tflite"
    assert expected_binary_name("rs_hashing/cli/__main__.py") == "rs_hashing_cli"


def test_every_test_file_has_exactly_one_test_target(targets):
    files = find_test_files()
    assert "tests/build_file_test.py" in files, f"test files not found under {REPO_ROOT}"
    owners = collections.defaultdict(list)
    for target in _test_targets(targets):
        for src in target.srcs:
            if src.endswith("_test.py"):
                owners[src].append(target.name)
    missing = [f for f in files if not owners[f]]
    doubled = {f: names for f, names in owners.items() if len(names) > 1}
    assert not missing, (
        "BUILD has no pytest_test for: " + ", ".join(missing) + "; add e.g. "
        + " ".join(f'pytest_test(name = "{expected_test_name(f)}", src = "{f}")' for f in missing))
    assert not doubled, f"BUILD runs these test files from several targets: {doubled}"


def test_every_test_target_names_an_existing_file(targets):
    for target in _test_targets(targets):
        tests = [src for src in target.srcs if src.endswith("_test.py")]
        assert len(tests) == 1, f"BUILD target {target.name} should run one *_test.py file, has {tests}"
        assert os.path.isfile(os.path.join(REPO_ROOT, tests[0])), (
            f"BUILD target {target.name} names {tests[0]}, which does not exist")


def test_imported_test_files_are_declared_helpers(targets):
    # Under Bazel a test sees only its declared files; an undeclared import works under
    # plain pytest and fails only in Bazel's sandbox.
    for target in _test_targets(targets):
        for src in target.srcs:
            if not src.endswith("_test.py") or not os.path.isfile(os.path.join(REPO_ROOT, src)):
                continue
            with open(os.path.join(REPO_ROOT, src), encoding="utf-8") as f:
                undeclared = [p for p in imported_test_files(f.read())
                              if p not in target.helpers and p not in target.srcs]
            assert not undeclared, (
                f"{src} imports from {undeclared}; add helpers = {undeclared} to BUILD target "
                f"{target.name} (or move the shared code to tests/testing.py)")


def test_test_target_names_follow_their_paths(targets):
    for target in _test_targets(targets):
        tests = [src for src in target.srcs if src.endswith("_test.py")]
        if tests:
            assert target.name == expected_test_name(tests[0]), (
                f"BUILD target {target.name} runs {tests[0]}; name it {expected_test_name(tests[0])}")


def test_target_names_are_unique(targets):
    counts = collections.Counter(t.name for t in targets)
    assert not [n for n, c in counts.items() if c > 1], f"duplicate BUILD target names: {counts}"


def test_every_entry_point_has_a_binary(targets):
    binaries = {t.main for t in targets if t.rule == "py_binary"}
    missing = [p for p in entry_points() if p not in binaries]
    assert not missing, (
        "BUILD has no py_binary for entry point(s): " + ", ".join(missing) + "; add e.g. "
        + " ".join(f'py_binary(name = "{expected_binary_name(p)}", srcs = ["{p}"], main = "{p}", '
                   'python_version = "PY3", deps = [":entry_point_lib"])' for p in missing))


def test_every_binary_main_exists(targets):
    for target in targets:
        if target.rule == "py_binary":
            assert target.main, f"BUILD py_binary {target.name} needs main = ... (several srcs)"
            assert os.path.isfile(os.path.join(REPO_ROOT, target.main)), (
                f"BUILD py_binary {target.name} runs {target.main}, which does not exist")


def test_binary_names_follow_their_paths(targets):
    for target in targets:
        if target.rule == "py_binary" and target.main:
            assert target.name == expected_binary_name(target.main), (
                f"BUILD py_binary {target.name} runs {target.main}; "
                f"name it {expected_binary_name(target.main)}")
