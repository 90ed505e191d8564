"""The Linux watchdog device (/dev/watchdog) as the outer fence for a frozen host.

The lock fence thread and the supervising parent (or systemd's watchdog) stop PostgreSQL when
governor hangs or dies; nothing in userspace helps when the whole host freezes (a stalled kernel,
a VM paused by its hypervisor): then only a hardware (or softdog) reset does. While, and only
while, this member holds the leader lock, governor keeps the device open and, at every renewal,
sets its timeout so that it fires before the lock can expire and after governor's own fences had
their chance; on release it disarms it with the magic close ('V'). A frozen host is therefore
reset before a replica can be promoted.

watchdog.mode:
  off        never open the device;
  automatic  use it when it can be opened and configured, otherwise log why once and go on;
  required   a member that cannot arm it does not take the leader lock (nor keep it).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import struct
from typing import Callable, Optional

from governor import clock

log = logging.getLogger("governor")

# <linux/watchdog.h>: _IOWR('W', 6, int) and _IOR('W', 7, int)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
MODES = ("off", "automatic", "required")


class WatchdogError(Exception):
    pass


def _ioctl_int(fd: int, request: int, value: int = 0) -> int:
    buf = fcntl.ioctl(fd, request, struct.pack("i", value))
    return struct.unpack("i", buf)[0]


class Watchdog:
    def __init__(self, mode: str, device: str, ioctl: Callable[[int, int, int], int] = _ioctl_int):
        self.mode = mode
        self.device = device
        self._ioctl = ioctl
        self._fd: Optional[int] = None
        self.timeout: Optional[int] = None
        self._warned: Optional[str] = None
        self._announced = False     # "armed" logged since the device was opened

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def keepalive(self, deadline: float, margin: float) -> bool:
        """Lock taken or renewed, expiring at `deadline` (monotonic): arm the device if needed and
        make it fire `margin` seconds before then at the latest. False when the mode is required and
        that is not possible (the caller must not hold the lock)."""
        if self.mode == "off":
            return True
        try:
            seconds = math.floor(deadline - margin - clock.monotonic())
            if seconds < 1:
                raise WatchdogError(f"only {deadline - clock.monotonic():.1f}s left on the lock: too little to "
                                    "set a watchdog timeout of at least 1 s before it expires")
            if self._fd is None:
                self._open()
            if self.timeout != seconds:
                got = self._ioctl(self._fd, WDIOC_SETTIMEOUT, seconds)   # also restarts the countdown
                if got > seconds:
                    raise WatchdogError(f"{self.device} took a timeout of {got}s when {seconds}s was asked: it "
                                        "would fire after the leader lock expires")
                self.timeout = got
            os.write(self._fd, b"1")
            if self._warned is not None or not self._announced:
                log.info("watchdog: %s armed while this member holds the leader lock (fires after %ss)",
                         self.device, self.timeout)
                self._announced = True
            self._warned = None
            return True
        except (OSError, WatchdogError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._close(magic=True)
            if self.mode == "required":
                if self._warned != reason:
                    log.error("watchdog: %s cannot be armed (%s) and watchdog.mode is required: not holding the "
                              "leader lock", self.device, reason)
                    self._warned = reason
                return False
            if self._warned != reason:
                log.warning("watchdog: %s not used (%s); a frozen host is then not reset before its lock "
                            "expires (watchdog.mode: automatic)", self.device, reason)
                self._warned = reason
            return True

    def disarm(self) -> None:
        """The lock is gone (and PostgreSQL no longer primary): close with the magic character so
        the device stops counting down."""
        if self._fd is not None:
            log.info("watchdog: %s disarmed", self.device)
        self._close(magic=True)

    def _open(self) -> None:
        try:
            self._fd = os.open(self.device, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise WatchdogError(f"{self.device} does not exist (no watchdog driver loaded; "
                                    "modprobe softdog for a software one)") from exc
            raise
        self.timeout = None
        self._announced = False

    def _close(self, magic: bool) -> None:
        if self._fd is None:
            return
        try:
            if magic:
                os.write(self._fd, b"V")
        except OSError:
            pass
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._fd = None
        self.timeout = None
