"""Tide: lend opportunistic compute to an HTCondor pool, and take it back in seconds."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tide")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
