"""Registry hooks: the receiver (an ASGI app) and the mapping from a model version to its audit."""
