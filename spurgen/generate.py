"""`python -m spurgen.generate`: the same as `spurgen generate` (spurgen/cli/generate.py)."""

import sys

from spurgen.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
