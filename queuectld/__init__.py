"""queuectld: the daemon that owns the queue and supervises the workers."""

__version__ = "0.1.0"
