"""Image metadata in a SQL database (SQLite by default, PostgreSQL by URL) through SQLAlchemy.

The ``images`` table is defined here, the others beside their stores (``accounts``, ``jobs``,
``limits``), all on ``database.Base``; ``migrate`` turns them into the database's schema with
Alembic revisions.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import BigInteger, Boolean, Engine, Float, Integer, String, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from cogserve.storage.database import Base, make_engine, translated


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
        with translated("open the metadata database"):
            self._engine = make_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Migrate the database to the newest schema: every table, not only the image metadata.

        Safe to call from several processes at once, and on a database made by any earlier
        release (``cogserve.storage.migrate``).
        """
        # Imported when migrating: Alembic takes longer to import than everything else here.
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
