"""`python -m train.train` in a checkout: the same command as `rs-hashing train`
(see `rs-hashing train --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train"))
