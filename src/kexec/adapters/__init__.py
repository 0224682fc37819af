"""Adapters: the ports implemented for Kubernetes, OPA/Rego, PostgreSQL, time; and fakes."""
