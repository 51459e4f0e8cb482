"""The semantic cache's vector index: nearest neighbours among a tenant's cached embeddings.

`cache_vectors` (SQL) is the source of truth; `open_vector_index(store)` picks the index by backend:

    SQLite                      sqlite-vec in a sidecar database `<store file>.vectors`  (sidecar.py)
    PostgreSQL with pgvector    an HNSW index in the database                            (pgvector.py)
    PostgreSQL without it       usearch HNSW indexes in this process                     (in_process.py)

Every index answers `nearest(tenant, grp, embedder, vector, k=, since=)` with cosine similarities,
best first, from rows of that tenant, request group and embedder only.
"""

from storage.sql.vectors.model import Neighbour, VectorEntry, VectorIndex
from storage.sql.vectors.opening import open_vector_index
from storage.sql.vectors.pgvector import has_pgvector

__all__ = ["Neighbour", "VectorEntry", "VectorIndex", "has_pgvector", "open_vector_index"]
