"""pytest support for kexec: fixtures on the local dev stack (the servers are in :mod:`devstack`).

- :mod:`tests.support.plugin`   -- fixtures bin_dir, control_plane, node_simulator, opa_bin; required_opa()
- :mod:`tests.support.postgres` -- fixtures postgres_server, pg_dsn, pg_audit_dsn
"""
