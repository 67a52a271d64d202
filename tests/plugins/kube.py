"""Kubernetes test fixtures (fake API server)."""
