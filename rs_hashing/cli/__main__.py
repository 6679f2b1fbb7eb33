"""`python -m rs_hashing.cli COMMAND ...`: the `rs-hashing` command without its script."""

import sys

from rs_hashing.cli import main

sys.exit(main())
