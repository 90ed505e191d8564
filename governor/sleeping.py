"""How the loop waits between passes: until loop_wait is up, or at once when the etcd watch wakes
it, or when what it watches locally changes (a PostgreSQL just started or re-pointed arriving, a
synchronous standby lost). The simulator asks poll_interval() and local_change() at its ticks."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

from governor import clock, publish
from governor.observe import settled

if TYPE_CHECKING:
    from governor.ports import NodeHost

MAX_SLEEP = 300.0      # no sleep of the loop lasts longer, whatever a setting says
SETTLE_POLL = 0.05     # how often a PostgreSQL that was just (re)started is looked at until it streams
SETTLE_MAX = 60.0      # ... and for how long at most
SYNC_POLL = 1.0        # how often a leader looks at the synchronous standbys its commits wait for


def sleep(g: NodeHost, seconds: float) -> None:
    seconds = min(seconds, MAX_SLEEP) if math.isfinite(seconds) else MAX_SLEEP
    if seconds <= 0 or g.stopping.is_set():
        return
    deadline = clock.monotonic() + seconds
    start_watching(g)
    while not g.stopping.is_set():
        poll = poll_interval(g)
        left = deadline - clock.monotonic()
        if poll is None or left <= 0:
            break
        if g.wake.wait(min(poll, left)) or local_change(g):
            return
    g.wake.wait(max(0.0, deadline - clock.monotonic()))


def start_watching(g: NodeHost) -> None:
    """As the loop goes to sleep: etcd's watch runs, so a change wakes it. A wake already set (a
    change seen while the pass ran, its own lock taken included) is news to the next pass: it stays
    set (run_once clears it before it reads etcd)."""
    if g.cluster is not None and g.watching is not g.dcs:
        if g.dcs.keep_watching(g.wake):
            g.watching = g.dcs


def poll_interval(g: NodeHost) -> Optional[float]:
    """How often to look at the local PostgreSQL while sleeping; None: not at all.
    Just started, promoted or re-pointed: every 0.05 s until it streams, so /status and the
    member key say so at once. A leader whose commits wait for standbys: every second, so a
    lost synchronous standby is replaced within about a second, not at the next loop."""
    if g.mem.settling_since is not None:
        return SETTLE_POLL
    if g.mem.holds_lock and g.syncrep.watches_standbys():
        return SYNC_POLL
    return None


def local_change(g: NodeHost) -> bool:
    """Whether what poll_interval() watches has changed: the next pass runs at once."""
    if g.mem.settling_since is not None:
        arrived = settled(g)
        if arrived is not None:
            publish.arrived(g, arrived)    # /status says so now; the pass that follows says the rest
        if arrived is not None or clock.monotonic() - g.mem.settling_since > SETTLE_MAX:
            g.mem.settling_since = None
            return True
        return False
    return g.syncrep.standby_lost() or g.syncrep.narrowing_pending()
