"""The shared tier's pure logic: Redis key and channel names, the L2 value format (with
wall-clock times and an optional HMAC signature) and the change messages every process
applies. No I/O and no Redis import: ``shared``, ``shared_values`` and ``shared_webhooks`` do
the talking.

Key layout (one hash tag per prompt name, so every command touches one slot of a Cluster)::

    apc:{<ns>}:gen                         the namespace's generation (``clear()`` bumps it)
    apc:{<ns>.<gen>.<name>}:v:<key>        a prompt's value
    apc:{<ns>.<gen>.<name>}:l:<key>        the lock of its fetch
    apc:{<ns>.<gen>.<name>}:i              the set of <key> held for the name
    apc:{<ns>.<gen>.<name>}:d              the values composed of the name: [parent, <key>]
    apc:{<ns>.<gen>.<name>}:u              its values of unknown composition: [name, label, version]
    apc:{<ns>.<gen>}:u                     the names that have values of unknown composition
    apc:<ns>:events                        the pub/sub channel of the namespace
    apc:<ns>:e:<event>                     a webhook event id claimed (applied) by a process
    apc:<ns>:w:<name, version>             the updatedAt of the newest webhook state applied

``<ns>`` hashes the user's namespace, the Langfuse host and the public key (never the
secret); ``<name>`` and ``<key>`` hash the prompt name and the structured key, so no name can
reach another's entries by prefix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Iterable
from typing import Any, Literal

import attrs

from .._core.errors import InvalidResponseError
from .._core.sealing import digest as _digest, seal, unseal
from .composition import parse_resolution_graph
from .keys import PromptKey
from .models import Prompt, parse_prompt

__all__ = [
    "Change",
    "Names",
    "decode_change",
    "decode_stored",
    "dependent_member",
    "encode_change",
    "encode_value",
    "parse_dependent_member",
    "parse_suspect_member",
    "parts_of",
    "suspect_member",
]

_VALUE_TAG = b"apc1"
_MESSAGE_TAG = b"apm1"  # a change message sealed with the tier's signing key
_MESSAGE_VERSION = 1
ChangeKind = Literal["invalidate", "clear", "expire", "filled", "released"]


def namespace_id(namespace: str, host: str, public_key: str | None) -> str:
    """The hashed namespace: the user's namespace, the Langfuse host, the public key."""
    return _digest("ns", namespace, host.rstrip("/").lower(), public_key or "")


@attrs.frozen
class Names:
    """Redis key and channel names for one namespace at one generation."""

    ns: str
    generation: int = 0

    @property
    def channel(self) -> str:
        return f"apc:{self.ns}:events"

    @property
    def generation_key(self) -> str:
        return f"apc:{{{self.ns}}}:gen"

    def _tag(self, name: str) -> str:
        return f"apc:{{{self.ns}.{self.generation}.{_digest('name', name)}}}"

    def key_id(self, key: PromptKey) -> str:
        return _digest("key", key.name, key.label, key.version, size=32)

    def value(self, key: PromptKey) -> str:
        return f"{self._tag(key.name)}:v:{self.key_id(key)}"

    def lock(self, key: PromptKey) -> str:
        return f"{self._tag(key.name)}:l:{self.key_id(key)}"

    @staticmethod
    def is_value(key: str) -> bool:
        """Whether ``key`` (a name from this class) is a prompt's value."""
        return ":v:" in key

    @staticmethod
    def lock_of_value(value: str) -> str:
        """The lock of the fetch of the value named ``value``."""
        tag, _, key_id = value.rpartition(":v:")
        return f"{tag}:l:{key_id}"

    def index(self, name: str) -> str:
        return f"{self._tag(name)}:i"

    def value_of_id(self, name: str, key_id: str) -> str:
        return f"{self._tag(name)}:v:{key_id}"

    def dependents(self, name: str) -> str:
        """The set of values composed of ``name`` (members from ``dependent_member``)."""
        return f"{self._tag(name)}:d"

    def event(self, event_id: str) -> str:
        """The claim of a webhook event id: set by the one process that applies it."""
        return f"apc:{self.ns}:e:{_digest('event', event_id, size=32)}"

    def version_state(self, name: str, version: int) -> str:
        """The ``updatedAt`` (epoch ms) of the newest webhook state of a version applied."""
        return f"apc:{self.ns}:w:{_digest('state', name, version, size=32)}"

    def suspects(self, name: str) -> str:
        """The set of ``name``'s values whose composition is unknown (a webhook's prompt):
        any change to another name may have changed them (members from ``suspect_member``)."""
        return f"{self._tag(name)}:u"

    @property
    def suspect_names(self) -> str:
        """The set of names with values in their ``suspects`` set."""
        return f"apc:{{{self.ns}.{self.generation}}}:u"


def parts_of(prompt: Prompt) -> frozenset[str]:
    """The names ``prompt`` is composed of (its ``resolutionGraph``); none if unreadable."""
    if prompt.resolution_graph is None:
        return frozenset()
    try:
        parts = parse_resolution_graph(prompt.resolution_graph)
    except InvalidResponseError:
        return frozenset()
    return frozenset(part.name for part in parts) - {prompt.name}


def dependent_member(names: Names, key: PromptKey) -> str:
    """A member of a part's dependents set: the including value's name and key id."""
    return json.dumps([key.name, names.key_id(key)], ensure_ascii=False, separators=(",", ":"))


def suspect_member(key: PromptKey) -> str:
    """A member of a name's suspects set: the structured key, for the message that drops it."""
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


def parse_suspect_member(raw: bytes | str) -> PromptKey | None:
    """The key of a suspects-set member; ``None`` for anything else."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and len(data) == 3 and isinstance(data[0], str) \
            and isinstance(data[1], str | None) and (data[2] is None or (
                isinstance(data[2], int) and not isinstance(data[2], bool))):
        return PromptKey(data[0], data[1], data[2])
    return None


def parse_dependent_member(raw: bytes | str) -> tuple[str, str] | None:
    """``(name, key id)`` of a dependents-set member; ``None`` for anything else."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep: foreign
        return None
    if isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data):
        return data[0], data[1]
    return None


# -- the L2 value ----------------------------------------------------------------------------


def encode_value(
    key: PromptKey, prompt: Prompt, fetched_at: float, signing_key: bytes | None,
    *, suspect: bool = False,
) -> bytes:
    """``apc1.<hmac-sha256 hex or ->.<canonical JSON>``; ``fetched_at`` is wall-clock time;
    ``suspect``: what the prompt includes is unknown (written through from a webhook)."""
    data: dict[str, Any] = {"key": list(key), "fetched_at": fetched_at, "prompt": _wire(prompt)}
    if suspect:
        data["suspect"] = True
    body = json.dumps(
        data, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
    ).encode("utf-8", "surrogatepass")  # a lone surrogate (valid JSON) round-trips
    return seal(_VALUE_TAG, body, signing_key)


def _wire(prompt: Prompt) -> dict[str, Any]:
    """The prompt's wire form with its ``resolutionGraph``, which ``to_dict`` leaves out: a
    process filled from L2 must know what a composed prompt includes."""
    data = prompt.to_dict()
    if prompt.resolution_graph is not None:
        data["resolutionGraph"] = prompt.resolution_graph
    return data


def decode_stored(
    raw: bytes, key: PromptKey, signing_key: bytes | None
) -> tuple[Prompt, float, bool]:
    """The prompt, its wall-clock fetch time and whether it is a suspect (its composition
    unknown), or ``InvalidResponseError`` saying why the value must not be served:
    truncated, corrupt, foreign (another key's or format's), unsigned or wrongly signed when a
    signing key is set."""
    body = unseal(raw, _VALUE_TAG, signing_key, "shared value")
    try:
        return _decode_value(body, key)
    except InvalidResponseError:
        raise
    except Exception as exc:  # nested too deep (RecursionError), or anything else unreadable
        raise InvalidResponseError(
            f"shared value: unreadable: {type(exc).__name__}", field=None) from None


def _decode_value(body: bytes, key: PromptKey) -> tuple[Prompt, float, bool]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidResponseError(f"shared value: bad JSON: {exc}", field=None) from None
    if not isinstance(data, dict) or data.get("key") != list(key):
        raise InvalidResponseError("shared value: holds another key", field="key")
    fetched_at = data.get("fetched_at")
    if isinstance(fetched_at, bool) or not isinstance(fetched_at, int | float) \
            or not math.isfinite(fetched_at):
        raise InvalidResponseError("shared value: bad fetched_at", field="fetched_at")
    prompt = parse_prompt(data.get("prompt"))
    if prompt.name != key.name:
        raise InvalidResponseError("shared value: holds another prompt", field="name")
    if key.version is not None and prompt.version != key.version:
        raise InvalidResponseError("shared value: holds another version", field="version")
    return prompt, float(fetched_at), data.get("suspect") is True


# -- change messages -------------------------------------------------------------------------


@attrs.frozen
class Change:
    """A change every process applies to its L1 (``AsyncPromptClient._apply_change``).

    * ``invalidate``: drop exactly ``keys`` (structured keys) and every key of ``names``,
      and every prompt composed of a name in ``changed`` (at any depth). ``puts`` are the
      prompts the sender wrote through (a write, a webhook): written to L2 before the message
      is published, never sent in it, so a receiver's next read of those keys is an L2 hit;
      ``moved`` (local too) are labels that left a version: until the version they moved to
      is written through (or a short grace ends), readers wait for it instead of fetching;
      ``suspect`` (local too): what the prompts put include is unknown (a webhook's), so a
      later change to any other name drops them from L2 and names them in its message;
    * ``clear``: drop everything (``generation`` is the namespace's new generation, for
      older receivers: a receiver reads the generation again from Redis, never trusting it);
    * ``expire``: mark every entry stale, to revalidate (local only: never published);
    * ``filled``: ``keys`` were just written to L2 (wakes processes waiting on their fetch);
    * ``released``: the fetch of ``keys`` failed and its lock is free (wakes them too).

    Receivers ignore kinds they do not know, so new kinds (writes, composed prompts) can be
    added without breaking older processes.
    """

    kind: ChangeKind
    keys: tuple[PromptKey, ...] = ()
    names: tuple[str, ...] = ()
    generation: int | None = None
    origin: str = ""
    changed: tuple[str, ...] = ()
    puts: tuple[tuple[PromptKey, Prompt], ...] = attrs.field(default=(), eq=False, repr=False)
    moved: tuple[PromptKey, ...] = attrs.field(default=(), eq=False, repr=False)
    suspect: bool = attrs.field(default=False, eq=False, repr=False)

    @classmethod
    def invalidate(
        cls, keys: Iterable[Hashable] = (), names: Iterable[str] = (),
        changed: Iterable[str] = (), puts: Iterable[tuple[PromptKey, Prompt]] = (),
        moved: Iterable[PromptKey] = (), suspect: bool = False,
    ) -> Change:
        return cls(
            "invalidate", tuple(PromptKey._make(k) for k in keys), tuple(names),  # type: ignore[arg-type]
            changed=tuple(changed), puts=tuple(puts), moved=tuple(moved), suspect=suspect,
        )


def encode_change(change: Change, signing_key: bytes | None = None) -> bytes:
    """The message of ``change``: JSON, sealed (``apm1.<hmac>.<JSON>``) with a signing key."""
    message: dict[str, Any] = {
        "v": _MESSAGE_VERSION, "kind": change.kind, "origin": change.origin,
        "keys": [list(k) for k in change.keys], "names": list(change.names),
    }
    if change.generation is not None:
        message["generation"] = change.generation
    if change.changed:
        message["changed"] = list(change.changed)
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8", "surrogatepass")
    return body if signing_key is None else seal(_MESSAGE_TAG, body, signing_key)


# ``expire`` is local only: never accepted from the wire.
_KINDS = ("invalidate", "clear", "filled", "released")


def decode_change(raw: bytes | str, signing_key: bytes | None = None) -> Change | None:
    """The change a message carries; ``None`` for a message this version cannot apply (or
    cannot read: nested too deep, not JSON). With a signing key, ``InvalidResponseError``
    for a message that is unsigned or wrongly signed."""
    if signing_key is not None:
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        raw = unseal(raw, _MESSAGE_TAG, signing_key, "change message")
    try:
        return _decode_change(raw)
    except Exception:  # RecursionError and the like: not a message this version can apply
        return None


def _decode_change(raw: bytes | str) -> Change | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("v") != _MESSAGE_VERSION:
        return None
    kind = data.get("kind")
    if kind not in _KINDS:
        return None
    keys = []
    for item in data.get("keys") or ():
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], str | None)
                and (item[2] is None or (isinstance(item[2], int)
                                         and not isinstance(item[2], bool)))):
            return None
        keys.append(PromptKey(item[0], item[1], item[2]))
    names = data.get("names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    generation = data.get("generation")
    if generation is not None and (isinstance(generation, bool)
                                   or not isinstance(generation, int)):
        return None
    changed = data.get("changed") or []
    if not isinstance(changed, list) or not all(isinstance(n, str) for n in changed):
        return None
    origin = data.get("origin")
    return Change(kind, tuple(keys), tuple(names), generation,
                  origin if isinstance(origin, str) else "", tuple(changed))
