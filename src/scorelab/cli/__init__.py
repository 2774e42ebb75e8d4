"""The ``scorelab`` command: maps arguments onto library calls, turns ``ValueError`` into exit status 2."""
from .main import main

__all__ = ["main"]
