"""The one HTTP edge: the owned aiohttp session (credentials, the one map from aiohttp's errors
to ours), URLs (the http(s) check, the proxy the environment names) and the retry policy with
the one ``Retry-After`` parser. It imports only ``_core``."""
