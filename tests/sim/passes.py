"""Running one member's real pass (`Governor.run_once`) in the simulated world.

On a slow host the pass is paused for a while of world time, in which the other members go on:
between its decision and its first action (the decision is carried out on what it read seconds
ago), or while it reads its PostgreSQL (a server slow to answer: the member's API answers others
meanwhile). Such a pass runs in a thread of its own, which hands control back and forth with the
world's loop (never both at once), so the run stays deterministic."""
from __future__ import annotations

import threading
import traceback
from typing import TYPE_CHECKING, Callable, Optional

from governor import clock

if TYPE_CHECKING:
    from tests.sim.world import Node


class Abandoned(BaseException):
    """The host of a paused pass crashed: the pass ends where it stands (nothing in governor catches this)."""


def run_once(node: Node, name: str) -> bool:
    """The pass; an exception that escapes it is a finding (the real loop would log and go on)."""
    from tests.sim.world import Violation
    try:
        return node.g.run_once()
    except (Violation, Abandoned):
        raise
    except Exception:  # noqa: BLE001
        raise Violation(f"unexpected error in {name}'s pass:\n{traceback.format_exc()}") from None


ACTIONS = "actions"      # where a pass pauses: before its first action
READ = "read"            # ... or in its first read of PostgreSQL's state


class PausedPass:
    """A pass in its own thread that stops before its first action (or in its read of PostgreSQL)
    until resume()."""

    def __init__(self, node: Node, install: Callable[[], None], where: str = ACTIONS):
        self.node = node
        self.where = where
        self.paused_once = False
        self.install = install           # makes the member's clock the clock (in the pass's thread)
        self._turn = threading.Condition()
        self._pass_runs = False          # whose turn it is: the pass's thread or the world's loop
        self.paused = False
        self.abandoned = False
        self.done = False
        self.ok = False
        self.started = 0.0
        self.error: Optional[BaseException] = None
        self.resume_at = 0.0
        self._thread = threading.Thread(target=self._body, name=f"slow-pass-{node.name}", daemon=True)

    # ---------------------------------------------------------------- in the pass's thread

    def _pause(self) -> None:
        self._hand_back(paused=True)
        if self.abandoned:
            raise Abandoned()
        self.node.elapsed = 0.0
        self.install()

    def _body(self) -> None:
        g = self.node.g
        real_execute, real_state = g.execute, g.server.state

        def execute(decision, local):
            if decision.actions and self.where == ACTIONS:
                self._pause()
            return real_execute(decision, local)

        def state():
            if self.where == READ and not self.paused_once:
                self.paused_once = True
                self._pause()
            return real_state()

        g.execute, g.server.state = execute, state
        try:
            self.install()
            self.started = clock.monotonic()
            self.ok = run_once(self.node, self.node.name)
        except Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the world's loop
            self.error = exc
        finally:
            del g.execute, g.server.state
            self.done = True
            self._hand_back(paused=False)

    def _hand_back(self, paused: bool) -> None:
        with self._turn:
            self.paused = paused
            self._pass_runs = False
            self._turn.notify_all()
            if paused:
                self._turn.wait_for(lambda: self._pass_runs)

    # ---------------------------------------------------------------- in the world's loop

    def _run_until_it_hands_back(self) -> None:
        with self._turn:
            self._pass_runs = True
            self._turn.notify_all()
            self._turn.wait_for(lambda: not self._pass_runs)
        if self.error is not None:
            raise self.error

    def start(self) -> None:
        self._pass_runs = True
        self._thread.start()
        with self._turn:
            self._turn.wait_for(lambda: not self._pass_runs)
        if self.error is not None:
            raise self.error

    def resume(self) -> None:
        self._run_until_it_hands_back()

    def abandon(self) -> None:
        if not self.done:
            self.abandoned = True
            self._run_until_it_hands_back()
        self._thread.join()
