"""Image metadata in a SQL database (SQLite by default, PostgreSQL by URL) through SQLAlchemy.

The tables are defined here and beside their stores (``accounts``, ``jobs``); ``migrate`` turns
them into the database's schema with Alembic revisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Engine,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.exc import DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from cogserve.errors import StorageError, StorageUnavailable


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    model: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    quality: Mapped[str] = mapped_column(String(16))
    steps: Mapped[int] = mapped_column(Integer)
    guidance_scale: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[str | None] = mapped_column(String(128), index=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    duration_s: Mapped[float] = mapped_column(Float)
    response_format: Mapped[str] = mapped_column(String(16))
    # Fields the SDKs send that cogserve records; watermark_enabled is whether the image was marked.
    user: Mapped[str | None] = mapped_column(String(256))
    style: Mapped[str | None] = mapped_column(String(64))
    sensitive_word_check: Mapped[str | None] = mapped_column(Text)
    watermark_enabled: Mapped[bool | None] = mapped_column(Boolean)


class MetadataStore:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            with translated("open the metadata database"):
                self._engine = create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as exc:
            raise StorageError(
                f"the driver for {url.split(':', 1)[0]} is not installed (no module {exc.name!r}); "
                "for PostgreSQL install cogserve's postgres extra: pip install 'cogserve[postgres]'"
            ) from exc
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", sqlite_pragmas)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Migrate the database to the newest schema: every table, not only the image metadata.

        Safe to call from several processes at once, and on a database made by any earlier
        release (``cogserve.storage.migrate``).
        """
        from cogserve.storage.migrate import upgrade

        upgrade(self._engine)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, shared with the account tables (``storage.accounts``)."""
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        """One round trip; ``StorageUnavailable`` when the database does not answer."""
        with translated("reach the database"), self._engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def add(self, row: ImageRow) -> None:
        with translated("record the image"), self._sessions.begin() as session:
            session.add(row)

    def get(self, image_id: str) -> ImageRow | None:
        with translated("read image metadata"), self._sessions() as session:
            return session.get(ImageRow, image_id)

    def expired_ids(self, now: float, limit: int = 1000) -> list[str]:
        with translated("list expired images"), self._sessions() as session:
            query = select(ImageRow.id).where(ImageRow.expires_at <= now).limit(limit)
            return list(session.scalars(query))

    def known_ids(self, ids: Iterable[str]) -> set[str]:
        wanted = list(ids)
        found: set[str] = set()
        with translated("look up images"), self._sessions() as session:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                found.update(session.scalars(select(ImageRow.id).where(ImageRow.id.in_(chunk))))
        return found

    def delete(self, ids: list[str]) -> int:
        if not ids:
            return 0
        with translated("delete image metadata"), self._sessions.begin() as session:
            result = session.execute(delete(ImageRow).where(ImageRow.id.in_(ids)))
            return int(getattr(result, "rowcount", 0) or 0)


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """Turn database errors into ``StorageError`` saying what was being done.

    Errors of the connection rather than of the statement (server down or restarting, network cut,
    SQLite locked past busy_timeout, pool exhausted) become ``StorageUnavailable``: 503, retry.
    """
    try:
        yield
    except (OperationalError, DisconnectionError, PoolTimeout) as exc:
        raise StorageUnavailable(f"the database is unavailable, could not {doing}; retry shortly") from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"database error while trying to {doing}") from exc


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the sweeper and readers run beside a writer; busy_timeout waits instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
