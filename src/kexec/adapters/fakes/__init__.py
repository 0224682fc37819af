"""In-memory fakes of the ports, for fast tests and `--simulate` runs."""

from kexec.adapters.fakes.clock import ManualClock
from kexec.adapters.fakes.cluster import FakeCluster

__all__ = ["FakeCluster", "ManualClock"]
