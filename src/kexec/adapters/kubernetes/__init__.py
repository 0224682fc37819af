"""Kubernetes adapters: the ClusterPort on kube-apiserver, the CRD and RBAC manifests."""
