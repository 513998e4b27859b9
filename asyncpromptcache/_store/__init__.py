"""The prompt store and Langfuse's rules, apart from the HTTP server that serves them.

``_sqlite`` is the SQLite prompt store (versions, labels, composed prompts resolved on
read), ``_schema`` Langfuse's create-time rules (names, labels, drafts, seed folders) and
``_compose`` its reference resolution. The local server (``asyncpromptcache.server``) and the
sources that read a store without HTTP (``StoreSource``, ``DirectorySource``) both use them,
so a prompt source never imports the server.
"""
