"""The durable spool: validated readings on disk until the database has them."""

from meter_gateway.storage.spool.spool import Spool, SpoolNote, SpoolStats

__all__ = ["Spool", "SpoolNote", "SpoolStats"]
