"""Safety-policy adapters (PolicyPort implementations).

- :mod:`.embedded`  -- ``EmbeddedPolicy``: regopy / rego-cpp in process (the default engine)
- :mod:`.opa_http`  -- ``OpaHttpPolicy``: an OPA server over its REST API
- :mod:`.reload`    -- ``ReloadablePolicy`` (hot reload) and ``ConfigMapPolicySource``
- :mod:`.bundle`    -- ``PolicySet``: loading policy sets from a directory or a ConfigMap
- :mod:`.fake`      -- ``FakePolicy`` for unit tests

The policies themselves, their input schema and their knobs: ``policies/README.md``.
Submodules are imported explicitly (``from kexec.adapters.policy.embedded import
EmbeddedPolicy``) so that importing one engine does not load the other's
dependencies.
"""
