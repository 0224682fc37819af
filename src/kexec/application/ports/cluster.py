from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kexec.domain.execution import Execution
from kexec.domain.resources import Mutation, Read
from kexec.domain.safety import Permission


class ClusterError(Exception):
    """An API error, classified the way a controller needs to act on it."""

    status = 500
    reason = "InternalError"
    retryable = True

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason


class NotFound(ClusterError):
    status, reason, retryable = 404, "NotFound", False


class AlreadyExists(ClusterError):
    status, reason, retryable = 409, "AlreadyExists", False


class Conflict(ClusterError):
    """resourceVersion mismatch: re-read and try again."""

    status, reason, retryable = 409, "Conflict", True


class Forbidden(ClusterError):
    status, reason, retryable = 403, "Forbidden", False


class Invalid(ClusterError):
    """Rejected by validation or admission."""

    status, reason, retryable = 422, "Invalid", False


class TooManyRequests(ClusterError):
    """Throttled, or an eviction blocked by a PodDisruptionBudget."""

    status, reason, retryable = 429, "TooManyRequests", True


class Unavailable(ClusterError):
    status, reason, retryable = 503, "ServiceUnavailable", True


@dataclass(frozen=True)
class Identity:
    """The per-action ServiceAccount an action runs (and is dry-run) as."""

    namespace: str
    service_account: str

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@dataclass(frozen=True)
class JobRequest:
    """One Job per attempt; its name is deterministic so creation is idempotent."""

    namespace: str
    name: str
    execution_name: str
    execution_uid: str
    service_account: str
    env: Mapping[str, str]
    backoff_limit: int
    active_deadline_seconds: int
    ttl_seconds_after_finished: int
    labels: Mapping[str, str] = field(default_factory=dict)
    # Nodes the Job pod must not run on (the node a node action changes).
    avoid_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobState:
    name: str
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    finished: bool = False
    success: bool = False
    reason: str = ""  # e.g. BackoffLimitExceeded, DeadlineExceeded, PodFailurePolicy
    message: str = ""
    pod_name: str = ""
    exit_code: int | None = None
    report: Mapping[str, Any] | None = None  # the runner's termination message, parsed

    @property
    def attempts(self) -> int:
        return self.succeeded + self.failed + (1 if self.active and not self.finished else 0)


class RunnerCluster(Protocol):
    """What the runner in a Job pod needs: read and mutate, as its own identity."""

    async def read(self, read: Read, identity: Identity | None = None) -> Any:
        """A Get answers the object (dict) or None; a List answers a list of objects."""
        ...

    async def mutate(
        self, mutation: Mutation, *, identity: Identity | None = None, dry_run: bool = False
    ) -> Any:
        """Carry out one mutation (server-side dry run when ``dry_run``); returns the object."""
        ...


class ExecutionStore(Protocol):
    """KubernetesExecution objects (what approve, rollback and the controller use)."""

    async def list_executions(self, *, active: bool = False) -> list[Execution]:
        """Every KubernetesExecution (from the controller's cache where it has one); with
        ``active``, only those not terminal (what most checks look at, and far fewer)."""
        ...

    async def get_execution(self, namespace: str, name: str) -> Execution | None: ...

    async def create_execution(self, execution: Execution) -> Execution: ...

    async def update_execution(self, execution: Execution) -> Execution:
        """Write metadata and spec (finalizers, approval); Conflict on a stale resourceVersion."""
        ...

    async def update_status(self, execution: Execution) -> Execution:
        """Write the status subresource; Conflict on a stale resourceVersion."""
        ...

    async def emit_event(self, execution: Execution, type_: str, reason: str, message: str) -> None:
        ...


class ClusterPort(RunnerCluster, ExecutionStore, Protocol):
    """Everything the controller's use cases ask of Kubernetes. Errors are ClusterError
    subclasses."""

    async def ensure_identity(
        self, identity: Identity, action: str, target_namespace: str
    ) -> None:
        """The ServiceAccount exists and is bound to the action's ClusterRole, scoped to
        ``target_namespace`` (a RoleBinding) or cluster-wide when it is "" (node actions)."""
        ...

    async def revoke_identity(
        self, identity: Identity, action: str, target_namespace: str
    ) -> None:
        """Remove the binding ``ensure_identity`` made (absent is fine): zero standing
        privilege."""
        ...

    async def identity_grants(self) -> list[tuple[Identity, str, str]]:
        """Every binding kexec made: (identity, action, target namespace or "")."""
        ...

    async def access_allowed(self, user: str, groups: tuple[str, ...],
                             permission: Permission) -> bool:
        """Ask the API server's authorizer (SubjectAccessReview) about someone else."""
        ...

    async def admission_installed(self) -> str:
        """"" when kexec's admission policies (requester stamp, approval check) are in
        force; otherwise what is missing."""
        ...

    async def create_job(self, job: JobRequest) -> None:
        """Create the Job; an existing Job of that name is success (idempotent)."""
        ...

    async def get_job(self, namespace: str, name: str) -> JobState | None: ...

    async def cluster_facts(self, namespace: str) -> dict[str, Any]:
        """Facts the policy needs: nodes, the target namespace's labels."""
        ...

    async def paused(self) -> bool:
        """The global kill switch: True pauses all new executions."""
        ...
