"""The throwaway PostgreSQL cluster: it serves queries, isolates databases, and cleans up."""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import demo.postgres
from demo.postgres import (
    PostgresCluster,
    PostgresError,
    PostgresNotFoundError,
    find_postgres_bin_dir,
)

TIMEOUT_S = 10.0


def _connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    """Connect with the connection and every statement bounded in time."""
    return psycopg.connect(
        dsn,
        connect_timeout=int(TIMEOUT_S),
        options=f"-c statement_timeout={int(TIMEOUT_S * 1000)}",
        autocommit=True,
    )


def _fetch_one(dsn: str, sql: str, params: tuple[object, ...] = ()) -> object:
    with _connect(dsn) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own, stopped (if the test did not) at the end."""
    cluster = PostgresCluster(startup_timeout=30, stop_timeout=10, command_timeout=10)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.unit
def test_missing_server_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotFoundError, match="`postgresql` package"):
        find_postgres_bin_dir(pg_config=None, search_root=tmp_path)


@pytest.mark.unit
def test_newest_installed_version_wins_without_pg_config(tmp_path: Path) -> None:
    for version in ("9", "15", "16"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl"):
            (bin_dir / tool).write_text("#!/bin/sh\n")
            (bin_dir / tool).chmod(0o755)
    (tmp_path / "17" / "bin").mkdir(parents=True)  # client tools only: no server
    assert find_postgres_bin_dir(pg_config=None, search_root=tmp_path) == tmp_path / "16" / "bin"


@pytest.mark.integration
def test_a_fresh_database_answers_queries(postgres_dsn: str) -> None:
    with _connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE t (n integer)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        row = conn.execute("SELECT current_database(), sum(n) FROM t").fetchone()
    assert row is not None
    assert row[0] == postgres_dsn.rsplit("/", 1)[1]
    assert row[1] == 3


@pytest.mark.integration
def test_two_databases_are_isolated(postgres_cluster: PostgresCluster, postgres_dsn: str) -> None:
    other = f"test_other_{secrets.token_hex(4)}"
    postgres_cluster.create_database(other)
    try:
        with _connect(postgres_dsn) as conn:
            conn.execute("CREATE TABLE only_here (n integer)")
        assert _fetch_one(postgres_dsn, "SELECT to_regclass('only_here') IS NOT NULL") is True
        other_dsn = postgres_cluster.dsn(other)
        assert _fetch_one(other_dsn, "SELECT to_regclass('only_here') IS NULL") is True
    finally:
        postgres_cluster.drop_database(other)


@pytest.mark.integration
def test_drop_terminates_open_connections(postgres_cluster: PostgresCluster) -> None:
    name = f"test_drop_{secrets.token_hex(4)}"
    postgres_cluster.create_database(name)
    with _connect(postgres_cluster.dsn(name)):
        postgres_cluster.drop_database(name)
    exists = _fetch_one(
        postgres_cluster.dsn(),
        "SELECT count(*) FROM pg_database WHERE datname = %s",
        (name,),
    )
    assert exists == 0


@pytest.mark.integration
def test_the_server_listens_on_loopback_only_with_its_own_socket_dir(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    assert _fetch_one(postgres_dsn, "SHOW listen_addresses") == "127.0.0.1"
    assert _fetch_one(postgres_dsn, "SHOW port") == str(postgres_cluster.port)
    sockdir = _fetch_one(postgres_dsn, "SHOW unix_socket_directories")
    assert sockdir == str(postgres_cluster.socket_dir)
    assert (postgres_cluster.socket_dir / f".s.PGSQL.{postgres_cluster.port}").is_socket()
    assert _fetch_one(postgres_dsn, "SHOW fsync") == "off"
    rules = _fetch_one(
        postgres_dsn,
        "SELECT string_agg(type || ' ' || coalesce(address, ''), ',' ORDER BY line_number) "
        "FROM pg_hba_file_rules",
    )
    assert rules == "local ,host 127.0.0.1"


@pytest.mark.integration
def test_the_server_does_not_run_as_root(postgres_cluster: PostgresCluster) -> None:
    owner = postgres_cluster.data_dir.stat().st_uid
    if os.geteuid() == 0:
        assert owner == pwd.getpwnam("postgres").pw_uid
    else:
        assert owner == os.geteuid()


@pytest.mark.integration
def test_stop_removes_the_temp_dir(own_cluster: PostgresCluster) -> None:
    own_cluster.start()
    directory = own_cluster.directory
    assert directory is not None and directory.is_dir()
    dsn = own_cluster.dsn()
    assert _fetch_one(dsn, "SELECT 1") == 1
    own_cluster.stop()
    assert not directory.exists()
    assert own_cluster.directory is None
    with pytest.raises(PostgresError, match="not running"):
        own_cluster.dsn()
    with pytest.raises(psycopg.OperationalError):
        _connect(dsn).close()
    own_cluster.stop()  # a second stop is a no-op


@pytest.mark.integration
def test_two_clusters_get_different_ports(
    postgres_cluster: PostgresCluster, own_cluster: PostgresCluster
) -> None:
    own_cluster.start()
    assert own_cluster.port != postgres_cluster.port
    assert own_cluster.directory != postgres_cluster.directory
    assert _fetch_one(own_cluster.dsn(), "SELECT 1") == 1
    assert _fetch_one(postgres_cluster.dsn(), "SELECT 1") == 1


@pytest.mark.integration
def test_a_port_taken_before_start_is_retried(
    own_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="demo.postgres")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        free_port = demo.postgres._free_port
        monkeypatch.setattr(demo.postgres, "_free_port", lambda: next(ports, None) or free_port())
        own_cluster.start()
        assert own_cluster.port != taken
        assert "port taken; retrying" in caplog.text
        assert _fetch_one(own_cluster.dsn(), "SHOW port") == str(own_cluster.port)
