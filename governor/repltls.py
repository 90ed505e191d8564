"""TLS for the members' connections to each other's PostgreSQL: streaming (primary_conninfo),
cloning (pg_basebackup), pg_rewind and governor's own questions to another server.

    postgresql:
      replication:
        sslmode: verify-full            # libpq's: disable, allow, prefer (default), require,
                                        # verify-ca, verify-full
        sslrootcert: /etc/governor/ca.pem   # the CA that signed the members' server certificates
        sslcert: ... / sslkey: ...      # optional: a client certificate
        hostssl: true                   # pg_hba.conf lines for the members' network: hostssl

With `verify-full` a replica streams only from a server whose certificate the CA signed for the
address it connects to; the servers' own certificates are PostgreSQL settings
(postgresql.parameters: ssl, ssl_cert_file, ssl_key_file).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Tuple

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "hostssl")


def check(c: Any) -> Tuple[Dict[str, str], bool]:
    """(libpq's SSL parameters for connections to other members, hostssl) from checker.Checker `c`."""
    mode = c.value("postgresql.replication.sslmode", "str", "prefer")
    if mode not in SSLMODES:
        c.fail("postgresql.replication.sslmode", f"expected one of {', '.join(SSLMODES)}, got {mode!r}")
        mode = "prefer"
    params = {"sslmode": mode}
    for key in ("sslrootcert", "sslcert", "sslkey"):
        path = c.value(f"postgresql.replication.{key}", "str",
                       check=lambda v: None if os.path.isfile(v) else f"file {v!r} does not exist")
        if path:
            params[key] = os.path.abspath(path)
    if mode in ("verify-ca", "verify-full") and "sslrootcert" not in params:
        c.fail("postgresql.replication.sslrootcert", f"required with sslmode {mode}: the CA that signed the "
                                                     "members' server certificates")
    if ("sslcert" in params) != ("sslkey" in params):
        c.fail("postgresql.replication.sslkey", "sslcert and sslkey must be given together")
    hostssl = c.value("postgresql.replication.hostssl", "bool", False)
    return params, bool(hostssl)


def environment(params: Dict[str, str]) -> Dict[str, str]:
    """The same parameters as libpq's environment variables, for pg_basebackup."""
    return {f"PG{key.upper()}": value for key, value in params.items()}
