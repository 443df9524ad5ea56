"""`python -m spurgen.report`: the same as `spurgen report` (spurgen/cli/report.py)."""

import sys

from spurgen.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
