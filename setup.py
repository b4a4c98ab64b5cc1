"""cffi's ``cffi_modules`` has no pyproject-only form; everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
