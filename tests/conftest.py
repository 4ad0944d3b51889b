"""Database URLs for the storage tests: always a SQLite file, and PostgreSQL when asked for.

Setting ``HIL_TEST_POSTGRES_URL`` (a SQLAlchemy URL such as
``postgresql+psycopg://user:password@127.0.0.1:5432/hil_test``, whose user owns that
database) runs every test that takes ``db_url`` once more against that server, each
time on an emptied ``public`` schema. A set but unreachable URL fails those tests:
whoever set it wants them run, and skipping would pass silently.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from db.errors import mask_url

POSTGRES_ENV = "HIL_TEST_POSTGRES_URL"

BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get(POSTGRES_ENV) else [])


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL URL from the environment, once checked to be reachable."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.fail(f"{POSTGRES_ENV} is set to {mask_url(url)} but that database cannot be used: "
                    f"{type(exc).__name__}: {exc}", pytrace=False)
    finally:
        engine.dispose()
    return url


def reset_postgres(url: str) -> None:
    """Empty the database at ``url``: drop and recreate its ``public`` schema."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            # A connection left open by an earlier test would otherwise block this forever.
            connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The PostgreSQL test database, emptied; skips the test when none is configured."""
    reset_postgres(postgres_server)
    return postgres_server


@pytest.fixture(params=BACKENDS)
def db_backend(request) -> str:
    """The name of the database backend a parametrized test runs on."""
    return request.param


@pytest.fixture
def db_url(db_backend, request, tmp_path) -> str:
    """A URL of an empty database: a new SQLite file, or the PostgreSQL test database emptied."""
    if db_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'hil.db'}"
    return request.getfixturevalue("postgres_url")
