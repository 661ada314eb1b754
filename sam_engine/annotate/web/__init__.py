"""The annotation page of stages 1 and 2: people click, the model answers at once, they fix and accept.

- ``round``: one round's images, who holds which, the drafts of what was accepted, the shard when done.
- ``segmenter``: the model behind the page (embeddings cached per image, one decoder call per prompt).
- ``options``: where and how the page is served (loopback unless allowed, a token), checked first.
- ``server``: the HTTP server (Starlette on uvicorn) and the page in ``static/``.
- ``masks``: masks as PNGs between page and server.
"""
