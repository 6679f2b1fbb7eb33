"""Keeps BUILD's pytest_test targets in step with tests/**/*_test.py: adds a target for
each new test file (named as tests/build_file_test.py expects) and drops the targets of
files that are gone. Run from the repository root: python3 tools/sync_build_tests.py
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STANZA = re.compile(r'\n(?:#[^\n]*\n)*pytest_test\(\n(?:[^()]|\([^()]*\))*?src = "([^"]+)",\n(?:[^()]|\([^()]*\))*?\)\n')


def main() -> int:
    build_path = os.path.join(ROOT, "BUILD")
    with open(build_path, encoding="utf-8") as f:
        build = f.read()
    tests = sorted(os.path.relpath(os.path.join(d, name), ROOT).replace(os.sep, "/")
                   for d, _, names in os.walk(os.path.join(ROOT, "tests")) for name in names
                   if name.endswith("_test.py"))
    for match in reversed(list(_STANZA.finditer(build))):
        if match.group(1) not in tests:
            build = build[:match.start()] + "\n" + build[match.end():]
            print(f"dropped {match.group(1)}")
    declared = set(re.findall(r'src = "(tests/[^"]+_test\.py)"', build))
    for path in tests:
        if path not in declared:
            name = path[len("tests/"):-len(".py")].replace("/", "_")
            build = build.rstrip("\n") + f'\n\npytest_test(\n    name = "{name}",\n    src = "{path}",\n)\n'
            print(f"added {path}")
    with open(build_path, "w", encoding="utf-8") as f:
        f.write(build)
    return 0


if __name__ == "__main__":
    sys.exit(main())
