"""Shim so older pip can install from setup.cfg."""
from setuptools import setup

setup()
