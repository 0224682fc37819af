"""kexec: executes single Kubernetes remediation actions safely."""

__version__ = "0.1.0"
