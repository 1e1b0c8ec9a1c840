"""The records: the results database, its migrations and locks, registrations, the object store, the model registry."""
