"""The prompt store of the local server: SQLite through the standard library.

One connection guarded by one lock; every call runs in a worker thread so the event loop never
waits on disk. Writes are ``BEGIN IMMEDIATE`` transactions: the version number is read and the
new row written under one write lock, so concurrent creates (even from another process sharing
the file) get distinct versions.

Labels are stored per version without ``latest``; ``latest`` is derived on read from the highest
version, so it can never point anywhere else, whatever was created or deleted.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio.to_thread
import attrs

from .._prompts.models import Prompt, PromptType, parse_prompt
from ._compose import (
    PromptNode,
    Reference,
    ResolutionError,
    resolve as resolve_node,
)
from ._references import PromptReferenceError, check_dependents, check_references
from ._schema import LATEST_LABEL, PRODUCTION_LABEL, PromptDraft, load_seed_dir

__all__ = [
    "PromptChange",
    "PromptConflictError",
    "PromptPage",
    "PromptReferenceError",
    "PromptStore",
    "PromptSummary",
    "StoreClosedError",
    "StoredPrompt",
]

_T = TypeVar("_T")
logger = logging.getLogger("asyncpromptcache.server")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompt_names (
    name TEXT PRIMARY KEY,
    tags TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS prompts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES prompt_names (name),
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    prompt TEXT NOT NULL,
    config TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '[]',
    commit_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (name, version)
);
"""

# Versions matching the list filters, each with its name's tags and newest version.
_MATCHING = """
WITH newest AS (SELECT name, MAX(version) AS version FROM prompts GROUP BY name),
matching AS (
    SELECT p.name, p.version, p.type, p.config, p.labels, p.updated_at, n.tags,
           w.version AS newest
    FROM prompts p
    JOIN prompt_names n ON n.name = p.name
    JOIN newest w ON w.name = p.name
    WHERE (:name IS NULL OR p.name = :name)
      AND (:label IS NULL
           OR (:label = 'latest' AND p.version = w.version)
           OR EXISTS (SELECT 1 FROM json_each(p.labels) j WHERE j.value = :label))
      AND (:tag IS NULL OR EXISTS (SELECT 1 FROM json_each(n.tags) j WHERE j.value = :tag))
      AND (:from_updated_at IS NULL OR p.updated_at >= :from_updated_at)
      AND (:to_updated_at IS NULL OR p.updated_at < :to_updated_at)
)
"""


class StoreClosedError(RuntimeError):
    """The store was used after ``close()``."""


class PromptConflictError(ValueError):
    """A create that contradicts the name's existing versions (a different prompt type)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class StoredPrompt:
    """One stored version: the prompt model plus the server-side fields of the wire format."""

    prompt: Prompt
    id: str
    created_at: str
    updated_at: str
    #: Langfuse's ``resolutionGraph`` when the prompt was resolved and has references.
    resolution_graph: dict[str, Any] | None = attrs.field(default=None, hash=False)

    def to_wire(self, project_id: str) -> dict[str, Any]:
        """The JSON body Langfuse sends for ``GET /api/public/v2/prompts/{name}``."""
        return {
            **self.prompt.to_dict(),
            "id": self.id,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "projectId": project_id,
            "resolutionGraph": self.resolution_graph,
        }


@attrs.frozen
class PromptChange:
    """One version a write changed, as Langfuse reports it in a prompt-version webhook:
    ``action`` is ``created``, ``updated`` or ``deleted``; ``prompt`` is resolved."""

    action: str
    prompt: StoredPrompt


@attrs.frozen
class PromptSummary:
    """One name in a prompt listing, aggregated over the versions that matched the filters."""

    name: str
    type: PromptType
    versions: tuple[int, ...]
    labels: tuple[str, ...]
    tags: tuple[str, ...]
    last_updated_at: str
    last_config: Any = attrs.field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        """The item in Langfuse's list format."""
        return {
            "name": self.name,
            "type": self.type,
            "versions": list(self.versions),
            "labels": list(self.labels),
            "tags": list(self.tags),
            "lastUpdatedAt": self.last_updated_at,
            "lastConfig": self.last_config,
        }


@attrs.frozen
class PromptPage:
    """One page of a prompt listing."""

    items: tuple[PromptSummary, ...]
    page: int
    limit: int
    total_items: int

    @property
    def total_pages(self) -> int:
        """Number of pages of ``limit`` names."""
        return math.ceil(self.total_items / self.limit)

    def to_dict(self) -> dict[str, Any]:
        """The body of ``GET /api/public/v2/prompts``."""
        return {
            "data": [item.to_dict() for item in self.items],
            "meta": {
                "page": self.page,
                "limit": self.limit,
                "totalItems": self.total_items,
                "totalPages": self.total_pages,
            },
        }


class PromptStore:
    """Prompts, versions, labels and tags in SQLite (a file path, or ``":memory:"``).

    The async methods run the database work in a worker thread. ``close()`` when done (or use
    the store as a context manager); a store the caller passes to the server stays the
    caller's to close.
    """

    def __init__(
        self, path: str | os.PathLike[str] = ":memory:", *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._path = os.fspath(path)
        self._clock = clock  # when versions are created and updated (tests set it)
        self._listeners: list[Callable[[list[PromptChange]], None]] = []
        self._pending: list[PromptChange] = []  # what the write under way changed
        self._lock = threading.Lock()
        self._closed = False
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE), never implicit.
        self._conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA busy_timeout = 5000")
            if self._path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.executescript(_SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    @property
    def path(self) -> str:
        """The database path, ``":memory:"`` for an in-memory store."""
        return self._path

    def __repr__(self) -> str:
        return f"PromptStore({self._path!r})"

    def __enter__(self) -> PromptStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def add_listener(self, listener: Callable[[list[PromptChange]], None]) -> None:
        """Call ``listener`` with the changes of every later write, once it has committed.

        It runs in the store's worker thread, under the store's lock: it must be quick and
        must not use the store (hand the changes to an event loop and return).
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[PromptChange]], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    # -- async API -------------------------------------------------------------------------

    async def create(self, draft: PromptDraft) -> StoredPrompt:
        """Store ``draft`` as the next version of its name (1 for a new name).

        Its labels move off any other version of the name; ``tags`` (when given) replace the
        name's tags. Raises ``PromptConflictError`` if the name's versions are of another type.
        """
        return (await self._run(functools.partial(self._create_all, [draft])))[0]

    async def create_many(
        self, drafts: Sequence[PromptDraft], *, skip_existing: bool = False
    ) -> list[StoredPrompt]:
        """Create several versions in one transaction: all are stored, or none.

        With ``skip_existing``, drafts for names the store already had are left out.
        """
        if not drafts:
            return []
        return await self._run(
            functools.partial(self._create_all, list(drafts), skip_existing=skip_existing)
        )

    async def import_dir(self, path: str | os.PathLike[str]) -> list[StoredPrompt]:
        """Create the prompts of every ``*.json`` file in a folder (see ``load_seed_dir``).

        Names already in the store are skipped, so seeding a database file again on every
        start does not pile up versions. Returns the versions created.
        """
        drafts = await anyio.to_thread.run_sync(load_seed_dir, path)
        return await self.create_many(drafts, skip_existing=True)

    async def get(
        self, name: str, *, version: int | None = None, label: str | None = None,
        resolve: bool = True,
    ) -> StoredPrompt | None:
        """One version by number or by label (``production`` when neither is given).

        With ``resolve`` (the default, as in Langfuse), its references are replaced by the
        prompts they name and ``resolution_graph`` says which; a reference that no longer
        resolves raises ``ResolutionError``.
        """
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        if version is None and label is None:
            label = PRODUCTION_LABEL
        return await self._run(functools.partial(self._get, name, version, label, resolve))

    async def list_prompts(
        self,
        *,
        name: str | None = None,
        label: str | None = None,
        tag: str | None = None,
        page: int = 1,
        limit: int = 50,
        from_updated_at: str | None = None,
        to_updated_at: str | None = None,
    ) -> PromptPage:
        """Names with at least one version matching all filters, by name, one page of them.

        ``from_updated_at`` (inclusive) and ``to_updated_at`` (exclusive) keep the versions
        updated in that span, as Langfuse does; give them as ``parse_updated_at`` returns.
        """
        if page < 1 or limit < 1:
            raise ValueError("page and limit start at 1")
        span = (from_updated_at, to_updated_at)
        return await self._run(
            functools.partial(self._list, name, label, tag, page, limit, span)
        )

    async def set_labels(
        self, name: str, version: int, new_labels: Sequence[str]
    ) -> StoredPrompt | None:
        """Add labels to one version, moving them off the others; ``None`` if no such version.

        ``new_labels`` should come from ``check_labels`` (``latest`` cannot be set).
        """
        if LATEST_LABEL in new_labels:
            raise ValueError("the label 'latest' is managed by the store")
        return await self._run(
            functools.partial(self._set_labels, name, version, tuple(new_labels))
        )

    async def delete(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> int:
        """Delete the versions of ``name`` (all, or those matching version and/or label).

        Returns how many versions were deleted.
        """
        return await self._run(functools.partial(self._delete, name, version, label))

    # -- blocking internals -----------------------------------------------------------------

    async def _run(self, func: Callable[[], _T]) -> _T:
        # Not cancellable once started: a write the client gave up on still commits or rolls
        # back as a whole, and the lock is never left held.
        return await anyio.to_thread.run_sync(self._locked, func)

    def _locked(self, func: Callable[[], _T]) -> _T:
        with self._lock:
            if self._closed:
                raise StoreClosedError("the prompt store is closed")
            self._pending = []
            try:
                result = func()
                changes = self._pending
            finally:
                self._pending = []
            if changes:
                for listener in list(self._listeners):
                    try:
                        listener(changes)
                    except Exception:  # a listener's fault is not the writer's
                        logger.exception("a prompt store listener failed")
            return result

    def _report(self, db: sqlite3.Connection, action: str, name: str, versions: Iterable[int]
                ) -> None:
        """Note the changes a write makes, resolved as they are now, for the listeners."""
        if self._listeners:
            for version in versions:
                self._pending.append(PromptChange(action, self._load(db, name, version,
                                                                     resolve=True, strict=False)))

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _now(self) -> str:
        moment = self._clock().astimezone(UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _create_all(
        self, drafts: list[PromptDraft], *, skip_existing: bool = False
    ) -> list[StoredPrompt]:
        with self._transaction(write=True) as db:
            if skip_existing:
                existing = {row[0] for row in db.execute("SELECT name FROM prompt_names")}
                drafts = [draft for draft in drafts if draft.name not in existing]
            keys = [self._insert(db, draft) for draft in drafts]
            return [self._load(db, name, version) for name, version in keys]

    def _insert(self, db: sqlite3.Connection, draft: PromptDraft) -> tuple[str, int]:
        name, version, touched = self._insert_version(db, draft)
        # Langfuse's events: "updated" for each older version the write changed (a label or
        # "latest" moved off it, new tags), then "created" for the new one.
        self._report(db, "updated", name, touched)
        self._report(db, "created", name, [version])
        return name, version

    def _insert_version(
        self, db: sqlite3.Connection, draft: PromptDraft
    ) -> tuple[str, int, list[int]]:
        newest = db.execute(
            "SELECT version, type FROM prompts WHERE name = ? ORDER BY version DESC LIMIT 1",
            (draft.name,),
        ).fetchone()
        if newest is not None and newest["type"] != draft.type:
            raise PromptConflictError(
                f"Previous versions of prompt '{draft.name}' are of type '{newest['type']}', "
                f"not '{draft.type}'. Create a prompt with a different name."
            )
        version = 1 if newest is None else newest["version"] + 1
        check_references(draft, version, self._lookup(db))
        now = self._now()
        old_tags = db.execute(
            "SELECT tags FROM prompt_names WHERE name = ?", (draft.name,)
        ).fetchone()
        touched = set() if newest is None else {newest["version"]}  # it loses "latest"
        if draft.tags is not None and old_tags is not None \
                and sorted(set(json.loads(old_tags[0]))) != sorted(set(draft.tags)):
            touched.update(row[0] for row in db.execute(
                "SELECT version FROM prompts WHERE name = ?", (draft.name,)
            ))
        if draft.tags is None:
            db.execute("INSERT OR IGNORE INTO prompt_names (name) VALUES (?)", (draft.name,))
        else:
            db.execute(
                "INSERT INTO prompt_names (name, tags) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET tags = excluded.tags",
                (draft.name, json.dumps(list(draft.tags))),
            )
        touched.update(self._take_labels(db, draft.name, draft.labels, keep_version=None, now=now))
        db.execute(
            "INSERT INTO prompts (id, name, version, type, prompt, config, labels,"
            " commit_message, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(uuid.uuid4()), draft.name, version, draft.type, json.dumps(draft.prompt),
                json.dumps(draft.config), json.dumps(list(draft.labels)),
                draft.commit_message, now, now,
            ),
        )
        return draft.name, version, sorted(touched)

    def _lookup(self, db: sqlite3.Connection) -> Callable[[Reference], PromptNode | None]:
        def lookup(reference: Reference) -> PromptNode | None:
            if reference.version is not None:
                if not reference.version.is_integer():
                    return None
                found = self._find(db, reference.name, int(reference.version), None)
            else:
                found = self._find(db, reference.name, None, reference.label)
            if found is None:
                return None
            return _node(self._row(db, reference.name, found))
        return lookup

    def _take_labels(
        self, db: sqlite3.Connection, name: str, labels: Sequence[str], *,
        keep_version: int | None, now: str,
    ) -> list[int]:
        """Remove ``labels`` from every version of ``name`` except ``keep_version``; the
        versions that had one."""
        if not labels:
            return []
        moving = set(labels)
        changed: list[int] = []
        for row in db.execute(
            "SELECT version, labels FROM prompts WHERE name = ?", (name,)
        ).fetchall():
            if row["version"] == keep_version:
                continue
            current: list[str] = json.loads(row["labels"])
            kept = [label for label in current if label not in moving]
            if kept != current:
                db.execute(
                    "UPDATE prompts SET labels = ?, updated_at = ? WHERE name = ? AND version = ?",
                    (json.dumps(kept), now, name, row["version"]),
                )
                changed.append(row["version"])
        return changed

    def _load(
        self, db: sqlite3.Connection, name: str, version: int, *, resolve: bool = False,
        strict: bool = True,
    ) -> StoredPrompt:
        row = self._row(db, name, version)
        if not resolve:
            return _to_stored(row)
        try:
            content, graph = resolve_node(_node(row), self._lookup(db))
        except ResolutionError:
            if strict:
                raise
            return _to_stored(row)
        return _to_stored(row, content, graph)

    def _row(self, db: sqlite3.Connection, name: str, version: int) -> sqlite3.Row:
        row = db.execute(
            "SELECT p.*, n.tags, (SELECT MAX(version) FROM prompts q WHERE q.name = p.name)"
            " AS newest FROM prompts p JOIN prompt_names n ON n.name = p.name"
            " WHERE p.name = ? AND p.version = ?",
            (name, version),
        ).fetchone()
        assert row is not None, (name, version)
        return row  # type: ignore[no-any-return]

    def _get(
        self, name: str, version: int | None, label: str | None, resolve: bool = False
    ) -> StoredPrompt | None:
        with self._transaction(write=False) as db:
            found = self._find(db, name, version, label)
            return None if found is None else self._load(db, name, found, resolve=resolve)

    def _find(
        self, db: sqlite3.Connection, name: str, version: int | None, label: str | None
    ) -> int | None:
        """The version number that ``version`` or ``label`` names, if it exists."""
        newest = db.execute(
            "SELECT MAX(version) FROM prompts WHERE name = ?", (name,)
        ).fetchone()[0]
        if newest is None:
            return None
        if version is None and label == LATEST_LABEL:
            version = newest
        if version is None:
            row = db.execute(
                "SELECT version FROM prompts p WHERE name = ? AND EXISTS"
                " (SELECT 1 FROM json_each(p.labels) j WHERE j.value = ?)"
                " ORDER BY version DESC LIMIT 1",
                (name, label),
            ).fetchone()
            if row is None:
                return None
            version = row["version"]
        found = db.execute(
            "SELECT 1 FROM prompts WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
        return None if found is None else version

    def _list(
        self, name: str | None, label: str | None, tag: str | None, page: int, limit: int,
        span: tuple[str | None, str | None] = (None, None),
    ) -> PromptPage:
        params = {"name": name, "label": label, "tag": tag, "limit": limit,
                  "offset": (page - 1) * limit, "from_updated_at": span[0],
                  "to_updated_at": span[1]}
        with self._transaction(write=False) as db:
            total = db.execute(
                _MATCHING + "SELECT COUNT(DISTINCT name) FROM matching", params
            ).fetchone()[0]
            rows = db.execute(
                _MATCHING
                + ", page AS (SELECT DISTINCT name FROM matching ORDER BY name"
                " LIMIT :limit OFFSET :offset)"
                " SELECT m.* FROM matching m JOIN page USING (name)"
                " ORDER BY m.name, m.version",
                params,
            ).fetchall()
        groups: dict[str, list[sqlite3.Row]] = {}
        for row in rows:
            groups.setdefault(row["name"], []).append(row)
        items = tuple(_summarise(versions) for versions in groups.values())
        return PromptPage(items=items, page=page, limit=limit, total_items=total)

    def _set_labels(
        self, name: str, version: int, new_labels: tuple[str, ...]
    ) -> StoredPrompt | None:
        with self._transaction(write=True) as db:
            row = db.execute(
                "SELECT labels FROM prompts WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
            if row is None:
                return None
            now = self._now()
            moved_from = self._take_labels(db, name, new_labels, keep_version=version, now=now)
            current: list[str] = json.loads(row["labels"])
            # Langfuse's order: the new labels first, then the ones the version already had.
            merged = list(dict.fromkeys([*new_labels, *current]))
            if merged != current:
                db.execute(
                    "UPDATE prompts SET labels = ?, updated_at = ? WHERE name = ? AND version = ?",
                    (json.dumps(merged), now, name, version),
                )
            # Langfuse sends "updated" for the version and for every version a label moved
            # off (and only then the version itself: a receiver that drops what a version no
            # longer serves never drops what the target now serves).
            self._report(db, "updated", name, [*moved_from, version])
            return self._load(db, name, version)

    def _delete(self, name: str, version: int | None, label: str | None) -> int:
        with self._transaction(write=True) as db:
            newest = db.execute(
                "SELECT MAX(version) FROM prompts WHERE name = ?", (name,)
            ).fetchone()[0]
            doomed = [
                row["version"]
                for row in db.execute(
                    "SELECT version, labels FROM prompts WHERE name = ?", (name,)
                ).fetchall()
                if (version is None or row["version"] == version)
                and (
                    label is None
                    or label in json.loads(row["labels"])
                    or (label == LATEST_LABEL and row["version"] == newest)
                )
            ]
            check_dependents(db, name, doomed, newest)
            self._report(db, "deleted", name, doomed)
            db.executemany(
                "DELETE FROM prompts WHERE name = ? AND version = ?", [(name, v) for v in doomed]
            )
            db.execute(
                "DELETE FROM prompt_names WHERE name = ? AND NOT EXISTS"
                " (SELECT 1 FROM prompts WHERE name = ?)",
                (name, name),
            )
            return len(doomed)

def _labels_of(row: sqlite3.Row) -> list[str]:
    labels: list[str] = json.loads(row["labels"])
    if row["version"] == row["newest"]:
        labels.append(LATEST_LABEL)
    return labels


def _node(row: sqlite3.Row) -> PromptNode:
    return PromptNode(
        id=row["id"], name=row["name"], version=row["version"], type=row["type"],
        prompt=json.loads(row["prompt"]), labels=tuple(_labels_of(row)),
    )


def _to_stored(
    row: sqlite3.Row, content: Any = None, graph: dict[str, Any] | None = None
) -> StoredPrompt:
    """The stored version; ``content`` and ``graph`` when it was resolved."""
    labels = _labels_of(row)
    prompt = parse_prompt({
        "name": row["name"],
        "version": row["version"],
        "type": row["type"],
        "prompt": json.loads(row["prompt"]) if content is None else content,
        "config": json.loads(row["config"]),
        "labels": labels,
        "tags": json.loads(row["tags"]),
        "commitMessage": row["commit_message"],
    })
    return StoredPrompt(
        prompt=prompt, id=row["id"], created_at=row["created_at"], updated_at=row["updated_at"],
        resolution_graph=graph,
    )


def _summarise(versions: list[sqlite3.Row]) -> PromptSummary:
    last = versions[-1]
    labels: set[str] = set()
    for row in versions:
        labels.update(json.loads(row["labels"]))
        if row["version"] == row["newest"]:
            labels.add(LATEST_LABEL)
    return PromptSummary(
        name=last["name"],
        type=last["type"],
        versions=tuple(row["version"] for row in versions),
        labels=tuple(sorted(labels)),
        tags=tuple(json.loads(last["tags"])),
        last_updated_at=max(row["updated_at"] for row in versions),
        last_config=json.loads(last["config"]),
    )
