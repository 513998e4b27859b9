"""The Redis kit (private): everything that talks to Redis for the prompt tier and the
response cache alike.

* ``tier``: ``RedisTier``, what the user configures, and its URL checks.
* ``health``: the one health policy, a breaker per connection (pure, clock injected).
* ``connection``: one redis.asyncio client per event loop under that policy, the one fork
  guard, scripts registered once and sent by SHA.
* ``lock``: the token lock (take, extend, compare-and-delete release).
* ``bus``: the namespace's pub/sub channel, with reconnect and an ``on_reconnect`` hook.
* ``scan``: a Cluster-safe scan of a namespace's keys.
* ``stats``: ``SharedStats``, the state and counters of either tier; ``text``: members read
  back as text (pure).

The tiers keep only their own logic: what to read, lock, write and announce.
"""

from .connection import Connection, Down, Script
from .health import Breaker
from .tier import ENV_VAR, RedisTier, resolve_shared

__all__ = ["ENV_VAR", "Breaker", "Connection", "Down", "RedisTier", "Script", "resolve_shared"]
