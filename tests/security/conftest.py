"""Fixtures for the attacks on a running node (tests/security): the integration ones."""

from integration.conftest import daemon_factory  # noqa: F401  (re-exported fixture)
