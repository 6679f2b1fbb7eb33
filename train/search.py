"""`python -m train.search` in a checkout: the same command as `rs-hashing search`
(see `rs-hashing search --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("search"))
