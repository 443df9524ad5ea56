"""`python -m spurgen.export`: the same as `spurgen export` (spurgen/cli/export.py)."""

import sys

from spurgen.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
