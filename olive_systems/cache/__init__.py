from .local import Entry, LocalCache, make_key

__all__ = ["Entry", "LocalCache", "make_key"]
