"""Run the ``scorelab`` CLI in-process for tests: one helper shared by the CLI test files."""
from __future__ import annotations

from scorelab.cli.main import main


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process -> (exit status, stdout, stderr); argparse's SystemExit becomes its code."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (a flag's type) exit 2 from inside parse_args
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
