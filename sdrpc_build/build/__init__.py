"""The build wing: from pins to a verified server in the store.

``pins`` (local tree) / ``remote`` (a ref over HTTPS) -> ``recipes`` (backends as data) ->
``plan`` (pure: the CMake lines and the cache key) -> ``doctor`` (the preflight shared with
``sdrpc doctor``) -> ``source`` (llama.cpp at the pinned commit) -> ``toolchain`` (cmake,
ninja, the one build runner) -> ``verify`` (a real handshake) -> ``store`` (atomic entries
with a manifest) -> ``wheel`` (server wheels). ``pipeline`` runs them in order; ``diskuse``
measures and prunes the cache; ``url`` and ``scratch`` keep secrets and temp dirs in line.
"""

__all__: list[str] = []
