"""FTP sessions and the pools that share them: one pool per connection, one manager per worker."""

from pools.manager import SessionPoolManager
from pools.pool import SessionPool
from pools.session import FTPSession
from pools.state import SessionState

__all__ = ["FTPSession", "SessionPool", "SessionPoolManager", "SessionState"]
