"""`python -m export.edge_encode` in a checkout: the same command as `rs-hashing edge-encode`
(see `rs-hashing edge-encode --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("edge-encode"))
