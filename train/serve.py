"""`python -m train.serve` in a checkout: the same command as `rs-hashing serve`
(see `rs-hashing serve --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("serve"))
