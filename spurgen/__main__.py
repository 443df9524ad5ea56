"""`python -m spurgen <command> [args...]`: the same as the `spurgen` console script (spurgen/cli/__init__.py)."""

import sys

from spurgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
