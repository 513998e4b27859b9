"""The fleet-wide memory of webhooks on the prompt tier's Redis: ``SharedWebhooks`` claims an
event id for the one process that applies it and records the newest state of each version
applied, so a replay, a retry that landed on another process or an older delivery retried
late is applied nowhere. Each process's own memory (``events``: ``SeenIds``,
``VersionStates``) is checked first; when Redis does not answer, it protects that process
alone (these answer "go ahead"). ``WebhookIntake`` asks, through ``SharedPrompts``.
"""

from __future__ import annotations

import contextlib

import anyio

from .._tiers.redis import Connection, Down
from .._tiers.redis.lock import release
from .shared_format import Names

__all__ = ["SharedWebhooks"]

# Record a webhook state's updatedAt unless a newer one of the version was applied already.
_NEWEST = Connection.script(
    "local applied = tonumber(redis.call('get', KEYS[1])) "
    "if applied and applied > tonumber(ARGV[1]) then return 0 end "
    "redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1"
)
#: How long a webhook event id stays claimed: past the signature's 5-minute window.
_EVENT_CLAIM_SECONDS = 600.0


class SharedWebhooks:
    """The webhook claims of process ``owner`` in namespace ``names`` (whose event and
    version-state keys outlive its generations), on ``conn``."""

    def __init__(self, conn: Connection, names: Names, owner: str) -> None:
        self._conn = conn
        self._names = names
        self._owner = owner

    async def claim_event(self, event_id: str) -> bool:
        """Claim webhook event ``event_id`` for this process, fleet-wide: false when another
        process (or this one) claimed it already (a replay or a retry that landed elsewhere).
        True when Redis is unreachable: then each process's own memory protects it alone."""
        if not self._conn.up:
            return True
        try:
            return bool(await self._conn.do(
                "set", self._names.event(event_id), self._owner, nx=True,
                px=int(_EVENT_CLAIM_SECONDS * 1000)))
        except Down:
            return True

    async def release_event(self, event_id: str) -> None:
        """Give up this process's claim of webhook event ``event_id`` (its handler did not
        finish): a retry of the event is then applied, here or elsewhere."""
        if self._conn.up:
            with contextlib.suppress(Down):
                await release(self._conn, self._names.event(event_id), self._owner)

    async def newest_state(self, name: str, version: int, updated_at: float, *,
                           claimed: str | None = None) -> bool:
        """Record that the state of ``name`` version ``version`` last updated at
        ``updated_at`` (epoch seconds) is applied, unless a newer state of it was, fleet-wide
        (then false: Langfuse retried an older delivery). True when Redis is unreachable.
        ``claimed``: the webhook event this process claimed, released if this is cancelled
        (the handler then never applies it: Langfuse's retry must, wherever it lands)."""
        if not self._conn.up:
            return True
        retain = max(1, int(self._conn.tier.stale_retention_seconds * 1000))
        try:
            return bool(await self._conn.run(
                _NEWEST, [self._names.version_state(name, version)],
                [str(int(updated_at * 1000)), str(retain)]))
        except Down:
            return True
        except BaseException:
            if claimed is not None:
                with anyio.CancelScope(shield=True):
                    await self.release_event(claimed)
            raise
