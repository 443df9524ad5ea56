"""`python -m spurgen.review ...` is `spurgen review ...` (spurgen/review/cli.py)."""

import sys

from spurgen.review.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m spurgen.review"))
