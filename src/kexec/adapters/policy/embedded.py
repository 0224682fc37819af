"""The embedded Rego engine (regopy / rego-cpp), the default PolicyPort.

A policy set is compiled once per version into a bundle
(``Interpreter.build("x = data.kexec.safety.decision")``) and every decision
is ``set_input`` + ``query_bundle`` — an order of magnitude cheaper than
``Interpreter.query`` (which re-compiles the modules on each call). The
decision DOCUMENT is queried, never single rules (a rule whose value comes
from a ``default`` can read as undefined in regopy).

An interpreter is stateful (input, then query), so each one is used by
one thread at a time: a :class:`CompiledPolicy` keeps a small pool of
interpreters, each with its own bundle, handed out through a queue.
Evaluations run in a dedicated executor with as many threads as the pool has
interpreters, off the event loop: a decision costs ≈ 1.5 to 3 ms of CPU (see
bench/policy_latency.py), more than the 1 ms an event-loop step may take, and
rego-cpp releases the GIL while it evaluates (ctypes), so two decisions really
run in parallel on two cores.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import sys
import threading
from collections.abc import Mapping, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kexec.adapters.policy.bundle import (
    DECISION_PACKAGE,
    DECISION_RULE,
    PolicyLoadError,
    PolicySet,
    check_decision_document,
    load_default_policy_set,
    prepare_input,
    smoke_input,
)
from kexec.application.ports.policy import PolicyUnavailable
from kexec.domain.policy import PolicyDecision


def _libstdcxx_loaded() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            return any("libstdc++" in line for line in maps)
    except OSError:
        return False


#: rego-cpp (librego_shared.so) brings its own ``operator new``/``delete`` (snmalloc).
#: Loaded into a process where libstdc++ is already loaded (aiohttp's and frozenlist's
#: extensions load it), libstdc++'s own code keeps glibc's allocator while rego-cpp's
#: frees with snmalloc: strings built by libstdc++ for rego-cpp (``rego::to_key``'s
#: ostringstream) are never freed, ≈ 115 MB per 1,000 decisions
#: (bench/policy_latency.py, "Memory"). The controller imports this module first
#: (``kexec.entrypoints.launch``, checked by a test); an info log says when the order was wrong.
LOADED_AFTER_LIBSTDCXX = "regopy" not in sys.modules and _libstdcxx_loaded()

import regopy  # type: ignore[import-untyped]  # noqa: E402
from regopy import Interpreter, LogLevel  # noqa: E402
from regopy import rego_shared as _rego_c  # noqa: E402

log = logging.getLogger(__name__)
ENGINE = "embedded"
_QUERY = f"x = data.{DECISION_PACKAGE}.{DECISION_RULE}"
_CONFIG_ERRORS_QUERY = f"data.{DECISION_PACKAGE}.config_errors"
DEFAULT_POOL_SIZE = 2

_ERROR_RE = re.compile(r"\(error \d+:([^|\s]*)\|(\d+)\|\d+\s*\(errormsg \d+:([^)]*)\)")


class PolicyEvaluationError(Exception):
    """The engine failed while evaluating (as opposed to an undefined result)."""


def _describe_rego_error(error: BaseException, modules: Mapping[str, str]) -> str:
    """Turn rego-cpp's error s-expression into ``file:line:col: message`` lines."""
    text = str(error.args[0] if error.args else error)
    found = []
    for name, offset_s, message in _ERROR_RE.findall(text):
        location = name
        source = modules.get(name)
        if source is not None:
            offset = int(offset_s)
            line = source.count("\n", 0, offset) + 1
            column = offset - (source.rfind("\n", 0, offset) + 1) + 1
            location = f"{name}:{line}:{column}"
        found.append(f"{location}: {message.strip()}" if location else message.strip())
    if found:
        return "; ".join(dict.fromkeys(found))
    return " ".join(text.split())[:500]


def _new_interpreter() -> Interpreter:
    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE  # rego-cpp otherwise prints errors to stdout
    return interpreter


_ERRMSG_RE = re.compile(r"\(errormsg \d+:([^)]*)\)")


def _engine_error_text(text: str) -> str:
    messages = [m.strip() for m in _ERRMSG_RE.findall(text)]
    if messages:
        return "; ".join(dict.fromkeys(messages))
    return " ".join(text.split())[:500]


def _parse_output(ok: bool, text: str) -> Any:
    """The value bound to ``x`` in a raw rego-cpp output; None when undefined.

    rego-cpp reports some evaluation errors (e.g. an unsafe variable) inside an
    otherwise "ok" output as an s-expression that is not JSON; those raise
    PolicyEvaluationError with the engine's message.
    """
    if not ok:
        raise PolicyEvaluationError(_engine_error_text(text))
    if text == "undefined":
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        raise PolicyEvaluationError(_engine_error_text(text)) from None
    results = parsed if isinstance(parsed, list) else [parsed]
    if not results or not isinstance(results[0], dict):
        return None
    bindings = results[0].get("bindings")
    return bindings.get("x") if isinstance(bindings, dict) else None


# The input document is handed to rego-cpp node by node through its C API
# (regoInput*), as regopy's ``Interpreter.set_input`` does, but calling the
# ctypes functions directly: regopy wraps every call in a Python function that
# copies each string into a new buffer and checks a status that the C side
# keeps anyway (a failed push makes the whole input invalid, reported once by
# regoSetInput). ≈ 35 % cheaper on the controller's inputs; same conversion
# (bool before int, sets, any Mapping or non-string Sequence).
_lib = _rego_c.rego
_push_str, _push_int, _push_float = _lib.regoInputString, _lib.regoInputInt, _lib.regoInputFloat
_push_bool, _push_null, _push_item = _lib.regoInputBoolean, _lib.regoInputNull, _lib.regoInputObjectItem
_push_object, _push_array, _push_set = _lib.regoInputObject, _lib.regoInputArray, _lib.regoInputSet


def _push(p: Any, value: Any) -> None:
    kind = type(value)
    if kind is str:
        _push_str(p, value.encode())
    elif kind is dict or (kind is not list and isinstance(value, Mapping)):
        for key, item in value.items():
            _push(p, key)
            _push(p, item)
            _push_item(p)
        _push_object(p, len(value))
    elif kind is bool:
        _push_bool(p, value)
    elif kind is list or kind is tuple:
        for item in value:
            _push(p, item)
        _push_array(p, len(value))
    elif value is None:
        _push_null(p)
    elif isinstance(value, bool):
        _push_bool(p, value)
    elif isinstance(value, int):
        _push_int(p, value)
    elif isinstance(value, float):
        _push_float(p, value)
    elif isinstance(value, str):
        _push_str(p, value.encode())
    elif isinstance(value, Set):
        for item in value:
            _push(p, item)
        _push_set(p, len(value))
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for item in value:
            _push(p, item)
        _push_array(p, len(value))
    else:
        raise TypeError(f"cannot convert {kind.__name__} to a Rego value")


def _set_input(interpreter: Interpreter, document: Any) -> None:
    handle = _rego_c.rego_new_input()
    try:
        _push(handle, document)
        _rego_c.rego_set_input(interpreter._impl, handle)  # raises RegoError on a failed push
    finally:
        _rego_c.rego_free_input(handle)


class _Slot:
    """One interpreter with its own compiled bundle; used by one thread at a time."""

    def __init__(self, policy_set: PolicySet) -> None:
        self.interpreter = _new_interpreter()
        for name, source in policy_set.modules.items():
            try:
                self.interpreter.add_module(name, source)
            except regopy.RegoError as exc:
                raise PolicyLoadError(f"module {name}: {_describe_rego_error(exc, policy_set.modules)}") from exc
        try:
            self.interpreter.add_data_json(json.dumps(policy_set.data))
        except regopy.RegoError as exc:
            raise PolicyLoadError(f"data.json: {_describe_rego_error(exc, {})}") from exc
        try:
            self.bundle = self.interpreter.build(_QUERY, [])
        except regopy.RegoError as exc:
            raise PolicyLoadError(f"compile: {_describe_rego_error(exc, policy_set.modules)}") from exc
        if not self.bundle.ok():
            raise PolicyLoadError("compile: rego-cpp could not build the policy bundle")

    def evaluate(self, input_document: Mapping[str, Any]) -> Any:
        # The raw C API (regopy.rego_shared) rather than Interpreter.query_bundle:
        # regopy's Output parses the text with json.loads and raises a bare
        # JSONDecodeError, losing rego-cpp's error message.
        try:
            _set_input(self.interpreter, input_document)
            output = _rego_c.rego_bundle_query(self.interpreter._impl, self.bundle._impl)
        except Exception as exc:  # RegoError, TypeError (input not JSON-like)...
            raise PolicyEvaluationError(f"{type(exc).__name__}: {exc}") from exc
        try:
            ok = bool(_rego_c.rego_output_ok(output))
            text = _rego_c.rego_output_string(output)
        finally:
            _rego_c.rego_free_output(output)
        return _parse_output(ok, text)

    def query(self, query: str) -> Any:
        output = self.interpreter.query(query)
        if not output.ok():
            raise PolicyEvaluationError(" ".join(str(output).split())[:500])
        if not output.results or not output.results[0].expressions:
            return None
        return output.results[0].expressions[0]


class CompiledPolicy:
    """A validated, compiled policy set: a pool of interpreters ready to decide.

    Building one validates the set (raises PolicyLoadError with a clear
    message): every module parses and compiles, the data document loads, the
    full configuration check ``data.kexec.safety.config_errors`` is empty (when
    the policy defines it), and smoke evaluations produce well-formed decision
    documents — the well-formed smoke input, and an empty input, which must be
    denied. ``validate=False`` skips the configuration check and the smoke
    evaluations (tests that need to see how a rejected set would behave).
    """

    def __init__(
        self,
        policy_set: PolicySet,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        validate: bool = True,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.policy_set = policy_set
        self.version = policy_set.version
        if LOADED_AFTER_LIBSTDCXX:
            log.info("rego-cpp was loaded after libstdc++: every decision leaks its key strings "
                        "(import kexec.adapters.policy.embedded before aiohttp)")
        first = _Slot(policy_set)
        if validate:
            self._validate(first)
        self._slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._slots.put(first)
        for _ in range(pool_size - 1):
            self._slots.put(_Slot(policy_set))
        self.pool_size = pool_size

    def _validate(self, slot: _Slot) -> None:
        try:
            errors = slot.query(_CONFIG_ERRORS_QUERY)
        except (PolicyEvaluationError, regopy.RegoError) as exc:
            raise PolicyLoadError(
                f"evaluating config_errors failed: {_describe_rego_error(exc, self.policy_set.modules)}"
            ) from exc
        if errors:
            items = errors if isinstance(errors, list) else [errors]
            listed = "; ".join(sorted(str(e) for e in items))
            raise PolicyLoadError(f"invalid configuration (data.kexec.config): {listed}")
        for label, document in (("smoke input", smoke_input()), ("empty input", {})):
            try:
                decision = slot.evaluate(document)
            except PolicyEvaluationError as exc:
                raise PolicyLoadError(f"smoke evaluation ({label}) failed: {exc}") from exc
            problem = check_decision_document(decision)
            if problem:
                raise PolicyLoadError(
                    f"smoke evaluation ({label}): data.{DECISION_PACKAGE}.{DECISION_RULE} "
                    f"is not a well-formed decision document: {problem}"
                )
            if label == "empty input" and decision["allow"]:
                raise PolicyLoadError(
                    "smoke evaluation (empty input): the policy allows an empty input; "
                    "it must deny input it cannot understand"
                )

    def evaluate(self, input_document: Mapping[str, Any]) -> Any:
        """The raw decision document (None when undefined). Blocking; thread-safe.

        Raises PolicyEvaluationError when the engine fails.
        """
        slot = self._slots.get()
        try:
            return slot.evaluate(input_document)
        finally:
            self._slots.put(slot)

    def decide(self, input_document: Mapping[str, Any]) -> PolicyDecision:
        """Blocking decision; raises PolicyUnavailable on engine errors."""
        try:
            document = self.evaluate(prepare_input(input_document))
        except PolicyEvaluationError as exc:
            raise PolicyUnavailable(f"embedded policy engine failed: {exc}") from exc
        return PolicyDecision.from_document(document, ENGINE)


def new_policy_executor(pool_size: int = DEFAULT_POOL_SIZE) -> ThreadPoolExecutor:
    """The executor decisions run in (one thread per pooled interpreter)."""
    return ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="kexec-policy")


class EmbeddedPolicy:
    """PolicyPort on the embedded engine, for one fixed policy set.

    ``policy_set`` defaults to the baked-in policies. Raises PolicyLoadError
    when the set is invalid. Use :class:`kexec.adapters.policy.reload.ReloadablePolicy`
    when the policy may change at run time.
    """

    engine = ENGINE

    def __init__(
        self,
        policy_set: PolicySet | None = None,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._compiled = CompiledPolicy(
            policy_set if policy_set is not None else load_default_policy_set(),
            pool_size=pool_size,
        )
        self._own_executor = executor is None
        self._executor = executor or new_policy_executor(pool_size)
        self._closed = threading.Event()

    @property
    def version(self) -> str:
        return self._compiled.version

    async def decide(self, input_document: dict[str, Any]) -> PolicyDecision:
        if self._closed.is_set():
            raise PolicyUnavailable("embedded policy engine is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._compiled.decide, input_document)
        except RuntimeError as exc:  # executor shut down under us
            raise PolicyUnavailable(f"embedded policy engine is not running: {exc}") from exc

    def decide_blocking(self, input_document: Mapping[str, Any]) -> PolicyDecision:
        """The same decision, computed on the calling thread (CLI, benchmarks)."""
        return self._compiled.decide(input_document)

    def close(self) -> None:
        self._closed.set()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
