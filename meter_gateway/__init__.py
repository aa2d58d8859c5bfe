"""meter-gateway: a smart-meter ingestion gateway.

One import package; its subpackages are the project's top-level folders:

- `meter_gateway.protocols`: MQTT and Modbus adapters, payload formats, register maps
- `meter_gateway.storage`: the InfluxDB writers and the dead-letter store
- `meter_gateway.config`: the configuration schema and its loader
- `meter_gateway.gateway`: the pipeline, validation, the running gateway, the CLI
- `meter_gateway.simulators`: meter models, an MQTT fleet, Modbus servers, pytest fixtures

Layers import downward only: `protocols` and `storage` at the bottom (neither
imports the other), `config` above them, `gateway` above `config`, `simulators` on
top. Modules of this root package (`configbase`) sit below all of them.
tests/test_layers.py keeps it so.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("meter-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
