from tests.e2e.kexec_env import kexec  # noqa: F401  (the session fixture)
