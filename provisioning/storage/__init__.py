"""Storage: the protocol the core uses, and `open_storage`, the one place a database is chosen."""

from __future__ import annotations

from provisioning.config import DatabaseConfig
from provisioning.storage.base import Database, Storage
from provisioning.storage.schema import LATEST_VERSION, migrate
from provisioning.storage.sql import SqlStorage

__all__ = ["LATEST_VERSION", "SqlStorage", "Storage", "open_storage"]


async def open_storage(config: DatabaseConfig) -> SqlStorage:
    """Connect to the configured database and migrate it; raises a `StorageError`."""
    db: Database
    if config.url is not None:
        # Imported here: a SQLite-only installation need not load the driver.
        from provisioning.storage.postgres import PostgresDatabase

        pg = PostgresDatabase(
            config.url,
            location=config.location,
            password=config.password,
            pool_size=config.pool_size,
            statement_timeout_s=config.timeout_s,
            acquire_timeout_s=config.timeout_s,
        )
        await pg.open()
        db = pg
    else:
        from provisioning.storage.sqlite import SqliteDatabase

        sqlite = SqliteDatabase(
            config.path,
            connections=min(config.pool_size, 8),
            busy_timeout_s=config.timeout_s,
            acquire_timeout_s=config.timeout_s,
        )
        await sqlite.open()
        db = sqlite
    storage = SqlStorage(db, location=config.location)
    try:
        await migrate(db, location=config.location)
    except BaseException:
        await storage.aclose()
        raise
    return storage
