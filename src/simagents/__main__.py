"""``python -m simagents`` runs the command line; so does ``torchrun -m simagents`` on every rank."""

import sys

from simagents.cli import main

if __name__ == "__main__":
    sys.exit(main())
