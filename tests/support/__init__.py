"""Test support for kexec: a real local Kubernetes control plane and friends.

- :mod:`tests.support.controlplane` -- etcd + kube-apiserver + kube-controller-manager
- :mod:`tests.support.simulator`    -- NodeSimulator (fake kubelets + scheduler)
- :mod:`tests.support.opa`          -- OPA server helper
- :mod:`tests.support.plugin`       -- pytest fixtures (bin_dir, control_plane, node_simulator, opa_bin)
"""
