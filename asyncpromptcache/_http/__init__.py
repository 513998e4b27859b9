"""The one HTTP edge: the owned aiohttp session (proxies, credentials, the one map from
aiohttp's errors to ours) and the retry policy with the one ``Retry-After`` parser."""
