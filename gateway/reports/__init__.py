"""Reports computed from the stored data: `meter-gateway report ...` (see README.md)."""
