"""Fixtures for all suites: a throwaway PostgreSQL cluster per session, a database per test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from demo.postgres import PostgresCluster

# Bounds for every subprocess the fixtures run (initdb, pg_ctl, psql).
PG_STARTUP_TIMEOUT_S = 30.0
PG_STOP_TIMEOUT_S = 10.0
PG_COMMAND_TIMEOUT_S = 10.0


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session: a temp dir, 127.0.0.1, a free port."""
    with PostgresCluster(
        startup_timeout=PG_STARTUP_TIMEOUT_S,
        stop_timeout=PG_STOP_TIMEOUT_S,
        command_timeout=PG_COMMAND_TIMEOUT_S,
    ) as cluster:
        yield cluster


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A libpq URL of a fresh database of its own, dropped (connections and all) after the test."""
    name = f"test_{secrets.token_hex(6)}"
    postgres_cluster.create_database(name)
    try:
        yield postgres_cluster.dsn(name)
    finally:
        postgres_cluster.drop_database(name)
