"""Task stores: `RedisStore` (several proxy replicas) and `FileStore` (one replica)."""

from serverless_comfyui.api.store.base import (
    Event,
    Mutation,
    StoreError,
    TaskStore,
    open_store,
)

__all__ = ["Event", "Mutation", "StoreError", "TaskStore", "open_store"]
