from tests.api.conftest import daemon, daemon_factory  # noqa: F401  (the real daemon fixtures)
