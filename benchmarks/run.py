"""Run vtdsim's benchmarks from a checkout: ``python benchmarks/run.py [--json] [--only NAME]``."""

import sys

from vtdsim.cli.main import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
