"""The prompt side: models and templates, the cache engine, the client and its collaborators
(reads, changes, writes, webhooks), the sync facade, the sources, and the prompt tier's use of
the Redis kit. Its public names are exported by ``asyncpromptcache``."""
