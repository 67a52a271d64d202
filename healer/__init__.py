"""healer: a self-healing daemon for Kubernetes clusters."""

__version__ = "0.1.0"
