"""Video job records that every frontend opening the same store shares, with leases so a job outlives its runner.

``--job-store`` picks the database: a SQLite file (the embedded default: one process, no server) or a PostgreSQL
URL, which several frontends share so that any of them answers for any job. Both go through one code path,
SQLAlchemy Core; where the two databases differ (the clock, row locks) the difference is one expression.

A job is *claimed*: its row names the frontend running it (``lease_owner``) and until when (``lease_expires_at``,
in the database's clock, so frontends' clocks never have to agree). The runner renews the lease while the job
waits or runs. A frontend that dies stops renewing; once the lease has expired another frontend claims the job
(``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, SQLite's single writer lock otherwise) and runs it again
from the start, each claim counting one attempt. Every write a runner makes is conditional on still holding the
claim, so a job deleted or taken over elsewhere is noticed at the runner's next write, and a late runner can
never overwrite what the new one did.

The schema is versioned (``MIGRATIONS``): each step runs once, in a transaction, in order, under a lock that
keeps two frontends starting together from racing, so an upgrade keeps every job, even from the first,
unversioned SQLite file.

One file of about 400 lines on purpose: the columns, their migrations and the store's lease-conditional writes are
one contract, and reading any of them means reading the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

log = logging.getLogger(__name__)

PENDING = ("queued", "in_progress")
INTERRUPTED = {"code": "interrupted", "message": "the server restarted before this video finished; create it again"}
_T = TypeVar("_T")


@dataclass
class VideoJob:
    id: str
    model: str
    status: str
    progress: int
    created_at: int
    seconds: str
    size: str
    prompt: str
    params: dict[str, Any]
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict[str, Any] | None = None
    media_key: str | None = None
    inference_time_s: float | None = None

    def to_object(self) -> dict[str, Any]:
        """The OpenAI video object (plus the generation settings actually used)."""
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": self.status,
            "progress": self.progress,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "expires_at": self.expires_at,
            "seconds": self.seconds,
            "size": self.size,
            "prompt": self.prompt,
            "error": self.error,
            "remixed_from_video_id": None,
            "seed": self.params.get("seed"),
            "num_frames": self.params.get("num_frames"),
            "fps": self.params.get("fps"),
            "inference_time_s": self.inference_time_s,
        }


@dataclass
class ClaimedJob:
    """A job this frontend now holds the lease on, with what running it again needs."""

    job: VideoJob
    request: dict[str, Any]
    input_image: bytes | None
    attempt: int


class JobStoreUnavailable(RuntimeError):
    """The job database cannot be reached (a PostgreSQL restart, a network cut); the API answers 503."""


class epoch_now(FunctionElement):  # noqa: N801 - used like a SQL function
    """The database's clock in seconds since the epoch: leases compare against one clock, whichever frontend
    wrote them."""

    type = sa.Float()
    inherit_cache = True


@compiles(epoch_now, "postgresql")
def _epoch_now_postgresql(element: epoch_now, compiler: Any, **kw: Any) -> str:
    return "extract(epoch from clock_timestamp())::float8"


@compiles(epoch_now, "sqlite")
def _epoch_now_sqlite(element: epoch_now, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


def _job_columns(version: int) -> list[sa.Column]:
    """The job table's columns as of a schema version. JSON is kept as text: the first schema stored it so, and
    text reads the same on both databases."""
    columns = [
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, unique=True, nullable=False),
        sa.Column("model", sa.Text),
        sa.Column("status", sa.Text),
        sa.Column("progress", sa.Integer),
        sa.Column("created_at", sa.BigInteger),
        sa.Column("seconds", sa.Text),
        sa.Column("size", sa.Text),
        sa.Column("prompt", sa.Text),
        sa.Column("params", sa.Text),
        sa.Column("completed_at", sa.BigInteger),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("error", sa.Text),
        sa.Column("media_key", sa.Text),
        sa.Column("inference_time_s", sa.Float),
    ]
    if version >= 2:  # what running the job again needs, and who runs it until when
        columns += [
            sa.Column("request", sa.Text),
            sa.Column("input_image", sa.LargeBinary),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("lease_owner", sa.Text),
            sa.Column("lease_expires_at", sa.Float),
        ]
    return columns


metadata = sa.MetaData()
video_jobs = sa.Table("video_jobs", metadata, *_job_columns(2))
_JOB_COLUMNS = [f.name for f in dataclasses.fields(VideoJob)]
_JSON_COLUMNS = {"params", "error"}
schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))


def _create_jobs_table(conn: Connection) -> None:
    """Version 1: the job records as the first release kept them (its SQLite files already have this table)."""
    sa.Table("video_jobs", sa.MetaData(), *_job_columns(1)).create(conn, checkfirst=True)


def _add_leases(conn: Connection) -> None:
    """Version 2: the stored request (to run a job again elsewhere), attempts, and the lease."""
    for column in _job_columns(2)[len(_job_columns(1)) :]:
        ddl = f"ALTER TABLE video_jobs ADD COLUMN {column.name} {column.type.compile(dialect=conn.dialect)}"
        if column.name == "attempts":
            ddl += " NOT NULL DEFAULT 0"
        conn.execute(sa.text(ddl))
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS video_jobs_pending ON video_jobs (status, lease_expires_at)"))


MIGRATIONS: list[Callable[[Connection], None]] = [_create_jobs_table, _add_leases]
_MIGRATION_LOCK = 0x7669646A6F6273  # pg_advisory_xact_lock key: "vidjobs"


def migrate(engine: Engine) -> int:
    """Bring the schema to the newest version, one transaction for all steps; returns the version reached."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
        schema_version.create(conn, checkfirst=True)
        current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
        for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
            log.info("job store: migrating the schema to version %d (%s)", version, step.__doc__.split(":")[0])
            step(conn)
            conn.execute(schema_version.insert().values(version=version))
    return len(MIGRATIONS)


def engine_for(url: str) -> Engine:
    """``postgresql://...`` (psycopg 3 underneath) or ``sqlite:///path``; a bare path means a SQLite file."""
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    elif "://" not in url:
        url = f"sqlite:///{Path(url).expanduser()}"
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_connected)
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    if url.startswith("postgresql"):
        # pre_ping: a pooled connection that a database restart cut is replaced instead of failing a request.
        return sa.create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args={"connect_timeout": 5}
        )
    raise ValueError(f"unsupported --job-store {url!r} (expected a SQLite path or a postgresql:// URL)")


def _sqlite_connected(dbapi_connection: Any, _: Any) -> None:
    """WAL so readers never wait on the writer; the driver's own transaction handling off, so that the ``begin``
    listener's ``BEGIN IMMEDIATE`` takes the write lock up front (a claim then reads what it updates)."""
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA journal_mode=WAL")


def _encode(column: str, value: Any) -> Any:
    return json.dumps(value) if column in _JSON_COLUMNS and value is not None else value


def _job(row: sa.Row) -> VideoJob:
    values = {c: row._mapping[c] for c in _JOB_COLUMNS}
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column]) if values[column] is not None else None
    return VideoJob(**values)


class VideoJobStore:
    """The job records behind one interface, whichever database holds them. Each call is one short
    transaction on a worker thread, so the event loop never waits on the database."""

    def __init__(self, url: str, lease_s: float = 20.0) -> None:
        self.url = url
        self.lease_s = lease_s
        self._engine = engine_for(url)
        self.version = self._guarded(migrate, self._engine)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    @staticmethod
    def _guarded(call: Callable[..., _T], *args: Any) -> _T:
        try:
            return call(*args)
        except sa.exc.OperationalError as exc:
            raise JobStoreUnavailable(f"the job store cannot be reached: {exc.orig or exc}") from exc

    async def _run(self, call: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.to_thread(self._guarded, call, *args)

    def _lease_until(self) -> sa.ColumnElement:
        return epoch_now() + self.lease_s

    # --- what the API reads and deletes -------------------------------------------------------------------

    def _get(self, job_id: str) -> VideoJob | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(video_jobs).where(video_jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def _list(self, after: str | None, limit: int, order: str) -> tuple[list[VideoJob], bool]:
        query = sa.select(video_jobs)
        if after is not None:
            after_seq = sa.select(video_jobs.c.seq).where(video_jobs.c.id == after).scalar_subquery()
            query = query.where(video_jobs.c.seq < after_seq if order == "desc" else video_jobs.c.seq > after_seq)
        query = query.order_by(video_jobs.c.seq.desc() if order == "desc" else video_jobs.c.seq.asc()).limit(limit + 1)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_job(r) for r in rows[:limit]], len(rows) > limit

    def _delete(self, job_id: str) -> bool:
        with self._engine.begin() as conn:
            return conn.execute(sa.delete(video_jobs).where(video_jobs.c.id == job_id)).rowcount > 0

    async def get(self, job_id: str) -> VideoJob | None:
        return await self._run(self._get, job_id)

    async def list(self, after: str | None, limit: int, order: str) -> tuple[list[VideoJob], bool]:
        return await self._run(self._list, after, limit, order)

    async def delete(self, job_id: str) -> bool:
        """Remove the record; a runner elsewhere notices at its next write and stops."""
        return await self._run(self._delete, job_id)

    # --- what a runner writes, each conditional on its claim ------------------------------------------------

    def _insert(self, job: VideoJob, request: dict[str, Any], image: bytes | None, owner: str) -> None:
        values = {c: _encode(c, v) for c, v in dataclasses.asdict(job).items()}
        values.update(
            request=json.dumps(request),
            input_image=image,
            attempts=1,
            lease_owner=owner,
            lease_expires_at=self._lease_until(),
        )
        with self._engine.begin() as conn:
            conn.execute(video_jobs.insert().values(**values))

    def _claimed_update(self, job_id: str, owner: str, values: dict[str, Any]) -> bool:
        query = (
            sa.update(video_jobs)
            .where(video_jobs.c.id == job_id, video_jobs.c.lease_owner == owner, video_jobs.c.status.in_(PENDING))
            .values(**values)
        )
        with self._engine.begin() as conn:
            return conn.execute(query).rowcount > 0

    def _progress(self, job_id: str, owner: str, percent: int) -> bool:
        # Never lower: a job run again from the start shows its old progress until it passes it.
        progress = sa.case((video_jobs.c.progress < percent, percent), else_=video_jobs.c.progress)
        values = {"status": "in_progress", "progress": progress, "lease_expires_at": self._lease_until()}
        return self._claimed_update(job_id, owner, values)

    def _finish(self, job_id: str, owner: str, changes: dict[str, Any]) -> bool:
        values = {c: _encode(c, v) for c, v in changes.items()}
        values.update(lease_expires_at=None, request=None, input_image=None)
        return self._claimed_update(job_id, owner, values)

    def _renew(self, owner: str, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        query = (
            sa.update(video_jobs)
            .where(video_jobs.c.id.in_(job_ids), video_jobs.c.lease_owner == owner, video_jobs.c.status.in_(PENDING))
            .values(lease_expires_at=self._lease_until())
            .returning(video_jobs.c.id)
        )
        with self._engine.begin() as conn:
            return set(conn.execute(query).scalars())

    def _release(self, owner: str, job_ids: Sequence[str]) -> int:
        """Hand jobs back at once (a graceful stop): the lease ends now and the attempt is not counted."""
        if not job_ids:
            return 0
        query = (
            sa.update(video_jobs)
            .where(video_jobs.c.id.in_(job_ids), video_jobs.c.lease_owner == owner, video_jobs.c.status.in_(PENDING))
            .values(lease_expires_at=0.0, attempts=video_jobs.c.attempts - 1, status="queued")
        )
        with self._engine.begin() as conn:
            return conn.execute(query).rowcount

    def _claim_expired(self, owner: str, limit: int, max_attempts: int) -> tuple[list[ClaimedJob], list[VideoJob]]:
        """Claim up to ``limit`` pending jobs whose lease has run out; a job that has no stored request (written
        before leases existed) or has used its attempts is failed instead. Returns (claimed, failed)."""
        expired = (
            sa.select(video_jobs)
            .where(
                video_jobs.c.status.in_(PENDING),
                sa.or_(video_jobs.c.lease_expires_at.is_(None), video_jobs.c.lease_expires_at < epoch_now()),
            )
            .order_by(video_jobs.c.seq)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL: two frontends never claim one job; SQLite: no-op
        )
        claimed: list[ClaimedJob] = []
        failed: list[VideoJob] = []
        with self._engine.begin() as conn:
            for row in conn.execute(expired).all():
                mapping = row._mapping
                where = video_jobs.c.id == mapping["id"]
                if mapping["request"] is None or mapping["attempts"] >= max_attempts:
                    error = INTERRUPTED if mapping["request"] is None else _attempts_exhausted(mapping["attempts"])
                    changes = {"status": "failed", "completed_at": int(time.time()), "error": json.dumps(error)}
                    conn.execute(
                        sa.update(video_jobs).where(where).values(lease_expires_at=None, input_image=None, **changes)
                    )
                    failed.append(_job(row))
                    continue
                conn.execute(
                    sa.update(video_jobs)
                    .where(where)
                    .values(
                        lease_owner=owner,
                        lease_expires_at=self._lease_until(),
                        attempts=video_jobs.c.attempts + 1,
                        status="queued",
                    )
                )
                claimed.append(
                    ClaimedJob(
                        _job(row), json.loads(mapping["request"]), mapping["input_image"], mapping["attempts"] + 1
                    )
                )
        return claimed, failed

    async def insert(self, job: VideoJob, request: dict[str, Any], image: bytes | None, owner: str) -> None:
        """A new job, claimed by ``owner`` (its first attempt)."""
        await self._run(self._insert, job, request, image, owner)

    async def progress(self, job_id: str, owner: str, percent: int) -> bool:
        """Record progress and renew the lease; False when the job is no longer this owner's to run."""
        return await self._run(self._progress, job_id, owner, percent)

    async def finish(self, job_id: str, owner: str, **changes: Any) -> bool:
        """Write the job's final state; False when it was deleted or taken over meanwhile."""
        return await self._run(self._finish, job_id, owner, changes)

    async def renew(self, owner: str, job_ids: Sequence[str]) -> set[str]:
        """Extend the leases of these jobs; returns those still this owner's."""
        return await self._run(self._renew, owner, list(job_ids))

    async def release(self, owner: str, job_ids: Sequence[str]) -> int:
        return await self._run(self._release, owner, list(job_ids))

    async def claim_expired(self, owner: str, limit: int, max_attempts: int) -> tuple[list[ClaimedJob], list[VideoJob]]:
        return await self._run(self._claim_expired, owner, limit, max_attempts)


def _attempts_exhausted(attempts: int) -> dict[str, str]:
    return {
        "code": "attempts_exhausted",
        "message": f"the video was started {attempts} times and each time the server running it stopped; "
        "create it again",
    }
