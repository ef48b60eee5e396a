"""`UserError`: bad input from the person at the command line (a leaf module: it imports nothing of latentvla).

A command raises it with a one-line message that says what is wrong and how to fix it; `latentvla.cli.main`
prints `error: <message>` to stderr and exits 2, so no command prints or returns the code itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (an unknown name, a missing file, an invalid setting): one line, exit code 2."""


def message(e: BaseException) -> str:
    """The one-line text of `e`; a KeyError's own message, not its quoted repr."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


@contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Inside the block, an exception of one of `types` is bad input: re-raised as a `UserError`."""
    try:
        yield
    except types as e:
        raise UserError(message(e)) from e
