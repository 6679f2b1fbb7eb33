"""`python -m train.index_archive` in a checkout: the same command as `rs-hashing index`
(see `rs-hashing index --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("index"))
