"""`python -m scorelab` runs the CLI (same as the `scorelab` command)."""
from scorelab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
