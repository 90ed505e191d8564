"""Setuptools shim: the metadata is in setup.cfg (kept for Debian's pybuild and RPM's %py3_build)."""
from setuptools import setup

setup()
