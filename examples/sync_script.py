"""A plain script using the sync client: no event loop, no ``asyncio.run``.

    python -m asyncpromptcache serve --seed examples/prompts      # in another terminal
    LANGFUSE_BASE_URL=http://127.0.0.1:3000 python examples/sync_script.py
"""

from __future__ import annotations

from asyncpromptcache import PromptClient


def main() -> None:
    # Settings (LANGFUSE_BASE_URL, keys, TTL) come from the environment.
    with PromptClient() as client:
        client.prefetch(["movie-critic", "support"])  # one round of concurrent fetches

        critic = client.get_prompt("movie-critic")  # a fresh hit: no I/O, this thread
        print(f"movie-critic v{critic.version}:",
              critic.compile(criticlevel="seasoned", movie="Dune"))

        support = client.get_prompt(
            "support", type="chat", fallback=[{"role": "system", "content": "Be brief."}]
        )
        history = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello!"}]
        for message in support.compile(product="Acme", user="Ann", history=history,
                                       question="Where is my order?"):
            print(f"  {message['role']:>9}: {message['content']}")

        stats = client.stats()
        print(f"{stats.fetches} fetches, {stats.hits} hits, {stats.entries} prompts cached")


if __name__ == "__main__":
    main()
