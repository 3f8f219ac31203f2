"""The error a user can fix: a bad setting, a missing or damaged file, an impossible request.

Scripts print a :class:`UserError` as one line (``<script>: error: <message>``) and exit with 2;
any other exception is a bug and shows its traceback. ``ALRS_DEBUG=1`` or ``--debug`` shows the
traceback of a UserError too, with its cause chained (``raise UserError(...) from exc``).
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem in what the user gave (a setting, a file, a request); the message names it and the fix.

    A ``ValueError``, so code that catches ``ValueError`` around alrs calls keeps working.
    """


__all__ = ["UserError"]
