"""pytest fixtures for simulated Modbus meters (filled in by the Modbus work)."""
