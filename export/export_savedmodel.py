"""`python -m export.export_savedmodel` in a checkout: the same command as `rs-hashing export-savedmodel`
(see `rs-hashing export-savedmodel --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("export-savedmodel"))
