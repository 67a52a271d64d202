"""The fault-injection suite: real processes on loopback, bounded (docs/faults.md)."""
