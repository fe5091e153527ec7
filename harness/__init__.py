"""The harness: topologies, peers, probes, suites runner and reports."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ipsec-interop")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
