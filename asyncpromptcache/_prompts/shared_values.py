"""What the prompt tier writes to Redis and drops from it: ``SharedValues``, the Redis I/O of
L2's prompt values for ``SharedPrompts`` (which decides when: it reads, locks, publishes and
queues). Key names and the value format are ``shared_format``'s.

* ``write`` stores a prompt's value with its key's index entry, its suspects entry (a value
  of unknown composition) and its parts' dependents entries: either under the fetch's lock
  (one Lua script, a no-op once an invalidation deleted that lock) or written through (the
  key's lock deleted in the same round trip).
* ``drop`` deletes what an invalidation drops: the values of its keys and names, the values
  composed of a changed name at any depth (the dependents sets), the values of unknown
  composition (the suspects sets), with the locks of fetches in flight on them; a label that
  moved gets a lock that holds its readers until the new version is written through.
"""

from __future__ import annotations

from .._tiers.redis import Connection
from .._tiers.redis.text import member_text
from .keys import PromptKey
from .models import Prompt
from .shared_format import (
    Change,
    Names,
    dependent_member,
    encode_value,
    parse_dependent_member,
    parse_suspect_member,
    parts_of,
    suspect_member,
)

__all__ = ["SharedValues"]

#: The token of the lock that holds readers of a label that moved until its new version is
#: written through (no process holds it: it only expires or is released by that write).
_MOVED = "moved"
# The write of a fetch's result: only while its lock still holds the fetch's token (an
# invalidation deletes the locks of the keys it drops: a fetch that may have read the old
# version upstream must not write it after that), then the lock is released. KEYS: lock,
# value, index, suspects set (one hash tag: one slot of a Cluster). ARGV: token, value, px,
# key id, suspects member.
_WRITE_HELD = Connection.script(
    "if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end "
    "redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3]) "
    "redis.call('sadd', KEYS[3], ARGV[4]) redis.call('pexpire', KEYS[3], ARGV[3]) "
    "redis.call('srem', KEYS[4], ARGV[5]) redis.call('del', KEYS[1]) return 1"
)


class SharedValues:
    """L2's prompt values and the sets beside them, written and dropped on ``conn``; values
    stay in Redis ``retain`` seconds past their TTL."""

    def __init__(self, conn: Connection, retain: float) -> None:
        self._conn = conn
        self._retain = retain
        self._tier = conn.tier
        self._wall = conn.tier._wall
        self._sign = conn.tier._signing_key

    async def write(
        self, names: Names, key: PromptKey, prompt: Prompt, ttl: float,
        suspect: bool = False, held: tuple[str, str] | None = None,
    ) -> bool:
        """Write ``prompt`` to L2 for ``key``, fresh for ``ttl`` from now; ``suspect``: its
        composition is unknown (registered for any later change to drop, see ``_suspects``).
        With ``held`` (a fetch's lock and token), only while that lock holds, then released:
        false if it did not hold. Without, the key's lock is deleted with the write."""
        value = encode_value(key, prompt, self._wall(), self._sign, suspect=suspect)
        px = max(1, int((ttl + self._retain) * 1000))
        if held is not None:
            lock, token = held
            if not await self._conn.run(
                    _WRITE_HELD,
                    [lock, names.value(key), names.index(key.name), names.suspects(key.name)],
                    [token, value, str(px), names.key_id(key), suspect_member(key)]):
                return False
        else:
            await self._write_through(names, key, value, px, suspect)
        member = dependent_member(names, key)
        for part in sorted(parts_of(prompt)):  # what it includes: dropped when a part changes
            pipe = self._conn.client().pipeline(transaction=False)  # the part's slot
            pipe.sadd(names.dependents(part), member)
            pipe.pexpire(names.dependents(part), px)
            await self._conn.execute(pipe)
        return True

    async def _write_through(
        self, names: Names, key: PromptKey, value: bytes, px: int,
        suspect: bool,
    ) -> None:
        """The write of a version written through (a write, a webhook): the key's lock goes
        in the same round trip, whoever holds it (the label-moved wait, or a fetch in flight
        that may have read an older version: its own write then fails)."""
        pipe = self._conn.client().pipeline(transaction=False)  # one slot; Cluster-safe
        pipe.set(names.value(key), value, px=px)
        pipe.sadd(names.index(key.name), names.key_id(key))
        pipe.pexpire(names.index(key.name), px)
        if suspect:
            pipe.sadd(names.suspects(key.name), suspect_member(key))
            pipe.pexpire(names.suspects(key.name), px)
        else:
            pipe.srem(names.suspects(key.name), suspect_member(key))
        pipe.delete(names.lock(key))
        await self._conn.execute(pipe)
        if suspect:
            pipe = self._conn.client().pipeline(transaction=False)  # the namespace's slot
            pipe.sadd(names.suspect_names, key.name)
            pipe.pexpire(names.suspect_names, px)
            await self._conn.execute(pipe)

    async def drop(self, names: Names, change: Change) -> list[PromptKey]:
        """Delete from L2 what the invalidation ``change`` drops, except the values of its
        puts (written through next, their locks with them), and hold the readers of its
        moved labels. Returns the values of unknown composition it dropped as well (every
        process drops them from L1 too)."""
        doomed, suspects = await self._doomed(names, change)
        written = {names.value(key) for key, _ in change.puts}
        moved_px = max(1, int(self._tier.moved_grace_seconds * 1000))
        for key in change.moved:
            # A label left this version; the version it moved to comes next: readers
            # wait for that (as for a fetch in flight) rather than fetch it.
            # (Taken from a fetch in flight too: it may have read the old version.)
            if names.value(key) not in written:
                await self._conn.do("set", names.lock(key), _MOVED, px=moved_px)
        waiting = {names.value(key) for key in change.moved}  # keep their _MOVED lock
        for keys in doomed.values():  # one hash-tagged group per command
            gone = [k for k in keys if k not in written]
            # And the locks of fetches in flight: one may have read the old version
            # (those of the keys written through go with that write).
            gone += [names.lock_of_value(k) for k in gone
                     if k not in waiting and names.is_value(k)]
            if gone:
                await self._conn.do("delete", *gone)
        return suspects

    async def _doomed(
        self, names: Names, change: Change
    ) -> tuple[dict[str, list[str]], list[PromptKey]]:
        """The L2 keys the invalidation ``change`` drops, by name (one hash tag each), and
        the values of unknown composition among them."""
        by_name: dict[str, list[str]] = {}
        for key in change.keys:
            by_name.setdefault(key.name, []).append(names.value(key))
        for name in change.names:
            ids = await self._conn.do("smembers", names.index(name))
            found = by_name.setdefault(name, [])
            found.extend(names.value_of_id(name, key_id) for key_id in
                         map(member_text, ids) if key_id is not None)
            found.append(names.index(name))
        suspects: list[PromptKey] = []
        if change.changed:
            spared = {*change.changed, *change.names, *(k.name for k in change.keys)}
            for name, (its, held_in) in (await self._suspects(names, spared)).items():
                suspects.extend(its)
                by_name.setdefault(name, []).extend([
                    *(names.value(key) for key in its), held_in])
        changed = (*change.changed, *dict.fromkeys(k.name for k in suspects))
        for name, keys in (await self._dependents(names, changed)).items():
            by_name.setdefault(name, []).extend(keys)
        return by_name, suspects

    async def _dependents(self, names: Names, changed: tuple[str, ...]) -> dict[str, list[str]]:
        """The L2 values composed of ``changed`` names at any depth, by name, and the
        dependents sets read (the values are about to be dropped, so are their entries)."""
        found: dict[str, list[str]] = {}
        queue, seen = list(changed), set(changed)
        while queue:
            name = queue.pop()
            members = await self._conn.do("smembers", names.dependents(name))
            found.setdefault(name, []).append(names.dependents(name))
            for raw in members or ():
                parsed = parse_dependent_member(raw)
                if parsed is None:
                    continue
                parent, key_id = parsed
                found.setdefault(parent, []).append(names.value_of_id(parent, key_id))
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        return found

    async def _suspects(
        self, names: Names, spared: set[str]
    ) -> dict[str, tuple[list[PromptKey], str]]:
        """The L2 values of unknown composition (a webhook's prompts) of names other than
        ``spared``, by name, with their suspects set: a change to any other name may have
        changed what they include, so it drops them."""
        found: dict[str, tuple[list[PromptKey], str]] = {}
        for raw in await self._conn.do("smembers", names.suspect_names) or ():
            name = member_text(raw)  # a foreign member is skipped, never fatal
            if name is None or name in spared:
                continue
            members = await self._conn.do("smembers", names.suspects(name))
            keys = [key for key in map(parse_suspect_member, members or ())
                    if key is not None and key.name == name]
            found[name] = (keys, names.suspects(name))
        if found:
            await self._conn.do("srem", names.suspect_names, *found)
        return found
