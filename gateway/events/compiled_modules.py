"""The modules of this package that the build compiles with mypyc: the one list.

Names are relative to `meter_gateway.gateway.events`. Three readers:

- setup.py compiles them (it runs this file on its own, `runpy.run_path`: the package
  is not importable while it is being built);
- `compiled` checks at import that each one's extension is there and built from its
  source, else loads them all from their `.py` files;
- scripts/setup.sh hashes their sources into its install stamp (a changed source is a
  new build).

So this file imports nothing but the standard library and holds only the list.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MODULES"]

MODULES: Final[tuple[str, ...]] = ("state", "engine", "detectors.consumption")
