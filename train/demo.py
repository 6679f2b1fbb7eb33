"""`python -m train.demo` in a checkout: the same command as `rs-hashing demo`
(see `rs-hashing demo --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("demo"))
