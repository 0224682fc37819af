"""PolicyPort over an OPA server's REST API (``POST /v1/data/kexec/safety/decision``).

Fails closed: a transport error, a timeout, a non-200 answer or a body that is
not JSON raises PolicyUnavailable. A 200 answer without ``result`` (the
document is undefined) is a deny, via ``PolicyDecision.from_document``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from kexec.adapters.policy.bundle import CONFIG_ERRORS_PATH, DECISION_PATH, prepare_input
from kexec.application.ports.policy import PolicyUnavailable
from kexec.domain.policy import PolicyDecision

ENGINE = "opa"
DEFAULT_TIMEOUT_SECONDS = 1.0


class OpaHttpPolicy:
    """Asks an OPA server for ``data.kexec.safety.decision``.

    Pass a shared ``httpx.AsyncClient`` (it is not closed by :meth:`aclose`),
    or let the adapter create its own. ``timeout`` bounds each decision end to
    end (connect, send, wait, read), whatever the client's own timeouts.
    """

    engine = ENGINE

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        decision_path: str = DECISION_PATH,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._decision_url = f"{self._base_url}/v1/data/{decision_path.strip('/')}"
        self._timeout = timeout
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        )

    async def decide(self, input_document: dict[str, Any]) -> PolicyDecision:
        body = await self._post(self._decision_url, {"input": prepare_input(input_document)})
        return PolicyDecision.from_document(body.get("result"), ENGINE)

    async def config_errors(self) -> list[str]:
        """The full configuration check of the loaded data (empty when valid).

        Meant for start-up: the per-decision check is only structural (see
        policies/README.md). Raises PolicyUnavailable when OPA cannot answer.
        """
        body = await self._post(f"{self._base_url}/v1/data/{CONFIG_ERRORS_PATH}", {})
        result = body.get("result")
        if result is None:
            return []
        if not isinstance(result, list):
            return [f"config_errors is {type(result).__name__}, not a list"]
        return sorted(str(e) for e in result)

    async def _post(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            content = json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise PolicyUnavailable(f"policy input is not JSON: {exc}") from exc
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(url, content=content, headers={"Content-Type": "application/json"})
        except TimeoutError as exc:
            raise PolicyUnavailable(f"OPA at {self._base_url} did not answer within {self._timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(f"OPA at {self._base_url} unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise PolicyUnavailable(
                f"OPA at {self._base_url} answered HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise PolicyUnavailable(f"OPA at {self._base_url} answered non-JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise PolicyUnavailable(f"OPA at {self._base_url} answered a non-object body")
        return body

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()
