"""The store's one error, and how an error is shown in a line (a module of its own: the adapters'
helpers raise it without importing the package that chooses among the adapters)."""
from __future__ import annotations

import re


class DCSError(Exception):
    """The store could not be reached or answered with an error."""


TLS_REFUSAL = re.compile(r"certificate verify failed: [^()'\"]*|CERTIFICATE_VERIFY_FAILED[^()'\"]*")


def short_error(exc: BaseException) -> str:
    """The first line of an exception, at most 200 characters, for log lines and DCSError; a TLS
    certificate refusal buried deeper in a wrapped error is named first."""
    text = str(exc) or type(exc).__name__
    first = text.splitlines()[0][:200]
    refusal = TLS_REFUSAL.search(text)
    if refusal and refusal.group(0) not in first:
        return f"TLS: {refusal.group(0).strip()} (check etcd.cacert): {first[:120]}"
    return first
