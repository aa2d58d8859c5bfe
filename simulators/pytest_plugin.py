"""pytest fixtures for simulated MQTT meter fleets and a broker (filled in by the simulator work)."""
