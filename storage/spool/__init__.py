"""The durable spool: validated readings on disk until the database has them."""

from meter_gateway.storage.spool.segment import RECORD_HEADER, Record, ScanResult, scan_segment
from meter_gateway.storage.spool.spool import Spool, SpoolNote

__all__ = ["RECORD_HEADER", "Record", "ScanResult", "Spool", "SpoolNote", "scan_segment"]
