"""The local dev stack: real servers for tests, benchmarks and local runs (not shipped in the image).

- :mod:`devstack.controlplane` -- etcd + kube-apiserver + kube-controller-manager
- :mod:`devstack.simulator`    -- NodeSimulator (fake kubelets + scheduler)
- :mod:`devstack.postgres`     -- a throw-away PostgreSQL server
- :mod:`devstack.opa`          -- an OPA server
- :mod:`devstack.harness`      -- kexec installed on the control plane, the controller as a subprocess

Installed with the project (``pip install -e .``); the pytest fixtures on it are in ``tests/support``.
"""
