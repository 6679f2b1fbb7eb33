"""`python -m export.export_tflite` in a checkout: the same command as `rs-hashing export-tflite`
(see `rs-hashing export-tflite --help`)."""

import sys

from rs_hashing.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("export-tflite"))
