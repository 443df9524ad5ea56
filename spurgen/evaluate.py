"""`python -m spurgen.evaluate`: the same as `spurgen evaluate` (spurgen/cli/evaluate.py)."""

import sys

from spurgen.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
