"""Examples of using asyncpromptcache; each runs as a script (see its docstring)."""
