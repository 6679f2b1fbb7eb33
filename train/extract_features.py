"""`python -m train.extract_features` in a checkout: the same command as `rs-hashing extract-features`
(see `rs-hashing extract-features --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("extract-features"))
