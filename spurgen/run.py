"""`python -m spurgen.run`: the same as `spurgen run` (spurgen/cli/run.py)."""

import sys

from spurgen.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
