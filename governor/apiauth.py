"""Who may control a member through its REST API, as the configuration files decide it.

An API reachable from other hosts serves control requests (switchover, failover, restart,
reinitialize, pause, PATCH /config) only to a client with credentials: Basic (restapi.username
and password, the same on every member) or a client certificate signed by restapi.cafile
(restapi.verify_client: required). A configuration that would serve them to anyone is refused,
unless the files say so explicitly (restapi.authentication: none, warned about at every start).
An API on loopback is reached only from its own host (the 2015 template's layout) and needs none.
Health checks (/primary, /replica, /health, ...) and /status stay open: they reveal no secret.
"""
from __future__ import annotations

from governor.checker import Checker


def check(c: Checker, where: str, loopback: bool, authenticated: bool) -> None:
    opt_out = c.value("restapi.authentication", "str")
    if opt_out is not None and opt_out != "none":
        c.fail("restapi.authentication", f"expected none (control requests without credentials) or nothing, got "
                                         f"{opt_out!r}")
    elif opt_out == "none" and authenticated:
        c.fail("restapi.authentication", "none contradicts restapi.username / restapi.verify_client: remove one")
    elif opt_out == "none" and not loopback:
        c.warnings.append(f"{c.where('restapi.authentication')}: restapi.authentication: none: anyone who reaches "
                          f"{where} may switch over, fail over, restart, reinitialize and change the configuration")
    elif not authenticated and not loopback:
        c.fail("restapi.listen", f"the API listens on {where}, beyond this host, and would serve control requests "
                                 "(switchover, failover, restart, reinitialize, PATCH /config) to anyone who reaches "
                                 "it: set restapi.username and restapi.password (the same on every member: "
                                 "governorctl and the other members use them), or restapi.verify_client: required "
                                 "with restapi.cafile; or, to accept that, restapi.authentication: none")
