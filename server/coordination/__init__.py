"""What several processes and nodes share, kept in Redis (`coordination.redis_url`): one
client per process (`link.py`), and beside it the shared limits, caps and streams."""

from .link import DOWN, RedisLink

__all__ = ["DOWN", "RedisLink"]
