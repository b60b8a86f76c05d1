"""Vector indexes by kind behind one protocol: exact (numpy), K-means IVF, Milvus (Lite file or server)."""
