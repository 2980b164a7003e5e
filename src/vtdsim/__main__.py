"""``python -m vtdsim``: the command line."""

from vtdsim.cli.main import main

if __name__ == "__main__":
    main()
