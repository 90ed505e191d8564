"""The watchdog device, against a stand-in: this machine's kernel has no watchdog driver (and cannot
load softdog), so the device is a regular file. With the real ioctl a regular file is refused as a
watchdog (ENOTTY), which is the path `required` and `automatic` must handle; the armed path is
checked with a stand-in for the kernel's ioctl that records what the driver would have been told."""
from __future__ import annotations

import logging
import time

import pytest

from governor.watchdog import WDIOC_SETTIMEOUT, Watchdog


class FakeDriver:
    """What a watchdog driver would be asked through ioctl; it may round a timeout up."""

    def __init__(self, round_to: int = 1):
        self.timeouts = []
        self.round_to = round_to

    def __call__(self, fd: int, request: int, value: int = 0) -> int:
        assert request == WDIOC_SETTIMEOUT
        got = -(-value // self.round_to) * self.round_to
        self.timeouts.append(got)
        return got


def test_armed_while_leader_fires_before_the_lock_and_disarms_with_the_magic_close(tmp_path):
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    driver = FakeDriver()
    dog = Watchdog("required", str(device), ioctl=driver)
    deadline = time.monotonic() + 10
    assert dog.keepalive(deadline, margin=0.5) and dog.armed
    assert driver.timeouts == [9], "fires at least the margin before the lock's expiry"
    assert dog.keepalive(deadline, margin=0.5)
    assert driver.timeouts == [9], "an unchanged timeout is not set again; the write is the keepalive"
    assert dog.keepalive(time.monotonic() + 30, margin=0.5)
    assert driver.timeouts == [9, 29]
    dog.disarm()
    assert not dog.armed
    assert device.read_bytes() == b"111V"


def test_a_device_that_rounds_the_timeout_past_the_lock_is_refused(tmp_path, caplog):
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    dog = Watchdog("required", str(device), ioctl=FakeDriver(round_to=60))
    assert not dog.keepalive(time.monotonic() + 10, margin=0.5)
    assert "took a timeout of 60s when 9s was asked" in caplog.text
    assert device.read_bytes() == b"V", "closed with the magic character, so it does not fire later"


@pytest.mark.parametrize("mode, holds", [("required", False), ("automatic", True), ("off", True)])
def test_a_device_that_is_not_a_watchdog(tmp_path, caplog, mode, holds):
    caplog.set_level(logging.INFO)
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    dog = Watchdog(mode, str(device))
    for _ in range(3):
        assert dog.keepalive(time.monotonic() + 10, margin=0.5) is holds
    assert not dog.armed
    if mode == "off":
        assert caplog.text == ""
    else:
        assert caplog.text.count("Inappropriate ioctl for device") == 1, "logged once, not every loop"


def test_a_missing_device_says_what_to_load(tmp_path, caplog):
    dog = Watchdog("required", str(tmp_path / "nowhere"))
    assert not dog.keepalive(time.monotonic() + 10, margin=0.5)
    assert "does not exist (no watchdog driver loaded; modprobe softdog" in caplog.text


def test_too_little_time_left_to_arm(tmp_path):
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    dog = Watchdog("required", str(device), ioctl=FakeDriver())
    assert not dog.keepalive(time.monotonic() + 1.2, margin=0.5)
