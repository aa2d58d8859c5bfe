"""Register maps: YAML data, validated at load.

A map lists which register holds which reading field, with its data type, word and
byte order, scale and offset. Map-wide `defaults` fill what an entry leaves out.
Bundled maps live in `maps/` and are named by `model:`; users bring their own with
`map: path.yaml`. Every problem names the file and the entry, e.g.
``sdm630.yaml: registers[3] (power_w): overlaps registers[2] (voltage_l3_v) at 0x0004``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from meter_gateway.protocols.modbus.datatypes import DATA_TYPES, ByteOrder, DataType, WordOrder
from meter_gateway.protocols.modbus.errors import RegisterMapError

__all__ = [
    "BUNDLED_MAPS_DIR",
    "READING_FIELDS",
    "FunctionCode",
    "ReadingField",
    "RegisterEntry",
    "RegisterMap",
    "bundled_map",
    "bundled_models",
    "load_map",
]

BUNDLED_MAPS_DIR = Path(__file__).with_name("maps")

#: The measurement fields (of `meter_reading`) a map may fill.
ReadingField = Literal[
    "energy_import_kwh",
    "energy_export_kwh",
    "power_w",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "power_factor",
    "frequency_hz",
]
READING_FIELDS: tuple[str, ...] = get_args(ReadingField)

#: 3 = read holding registers, 4 = read input registers.
FunctionCode = Literal[3, 4]
_FUNCTION_NAMES = {"holding": 3, "input": 4}

#: The Modbus protocol's own limit for one read of registers (125 words in 256 bytes).
MODBUS_MAX_READ = 125


def _function_code(value: Any) -> Any:
    """Accept `function: 4`, `function: input` or `function: holding`."""
    if isinstance(value, str) and value.lower() in _FUNCTION_NAMES:
        return _FUNCTION_NAMES[value.lower()]
    return value


class RegisterEntry(BaseModel):
    """One value: where it is, how it is packed, and which reading field it fills."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: ReadingField
    address: int = Field(ge=0, le=0xFFFF, description="wire address, 0-based")
    type: DataType
    function: FunctionCode
    word_order: WordOrder = WordOrder.BIG
    byte_order: ByteOrder = ByteOrder.BIG
    scale: float = 1.0
    offset: float = 0.0

    _fc = field_validator("function", mode="before")(_function_code)

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, v: float) -> float:
        if v == 0:
            raise ValueError("must not be 0 (value = raw * scale + offset)")
        return v

    @property
    def count(self) -> int:
        """Registers this entry occupies."""
        return DATA_TYPES[self.type].registers

    @property
    def end(self) -> int:
        """One past the last register of this entry."""
        return self.address + self.count


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: DataType | None = None
    function: FunctionCode | None = None
    word_order: WordOrder | None = None
    byte_order: ByteOrder | None = None

    _fc = field_validator("function", mode="before")(_function_code)


class RegisterMap(BaseModel):
    """A device's register map. Build with `load_map` or `RegisterMap.from_dict`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    source: str = Field("", description="where the addresses come from (manual, page)")
    max_registers_per_request: int = Field(MODBUS_MAX_READ, ge=1, le=MODBUS_MAX_READ)
    max_gap: int = Field(0, ge=0, description="unused registers a merged read may span")
    defaults: _Defaults = _Defaults()
    registers: list[RegisterEntry] = Field(min_length=1)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<map>") -> RegisterMap:
        """Validate a map; problems raise `RegisterMapError` naming `origin` and the entry."""
        if not isinstance(data, dict):
            raise RegisterMapError(
                f"{origin}: a register map is a mapping, got {type(data).__name__}"
            )
        data = _apply_defaults(data)
        try:
            rmap = cls.model_validate(data)
        except ValidationError as exc:
            raise RegisterMapError(_format_errors(origin, data, exc)) from None
        rmap.check_layout(origin)
        return rmap

    def check_layout(self, origin: str, max_registers: int | None = None) -> None:
        """Overlaps, duplicate fields and reads wider than the device allows."""
        limit = max_registers or self.max_registers_per_request
        seen: dict[str, int] = {}
        problems: list[str] = []
        for i, entry in enumerate(self.registers):
            where = f"registers[{i}] ({entry.field})"
            if entry.field in seen:
                problems.append(f"{where}: field already mapped by registers[{seen[entry.field]}]")
            seen.setdefault(entry.field, i)
            if entry.count > limit:
                problems.append(
                    f"{where}: {entry.type} needs {entry.count} registers, more than "
                    f"max_registers_per_request {limit}"
                )
            if entry.end > 0x10000:
                problems.append(f"{where}: {entry.type} at 0x{entry.address:04X} runs past 0xFFFF")
        # Compare each entry with the one reaching furthest before it (of its function).
        order = sorted(range(len(self.registers)), key=self._key)
        widest: int | None = None
        for cur in order:
            b = self.registers[cur]
            if widest is not None:
                a = self.registers[widest]
                if a.function == b.function and b.address < a.end:
                    problems.append(
                        f"registers[{cur}] ({b.field}): overlaps registers[{widest}] ({a.field}) "
                        f"at 0x{b.address:04X}"
                    )
            w = None if widest is None else self.registers[widest]
            if w is None or w.function != b.function or b.end > w.end:
                widest = cur
        if problems:
            raise RegisterMapError("\n".join(f"{origin}: {p}" for p in problems))

    def _key(self, k: int) -> tuple[int, int, int]:
        e = self.registers[k]
        return (e.function, e.address, k)

    @property
    def functions(self) -> frozenset[int]:
        """Function codes the map reads with."""
        return frozenset(e.function for e in self.registers)


def _apply_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Copy map-wide defaults into entries that leave the key out."""
    defaults = data.get("defaults") or {}
    entries = data.get("registers")
    if not isinstance(defaults, dict) or not isinstance(entries, list):
        return data
    filled = []
    for entry in entries:
        if isinstance(entry, dict):
            entry = {**{k: v for k, v in defaults.items() if v is not None}, **entry}
        filled.append(entry)
    return {**data, "registers": filled}


def _format_errors(origin: str, data: dict[str, Any], exc: ValidationError) -> str:
    lines = []
    registers = data.get("registers")
    entries = registers if isinstance(registers, list) else []
    for err in exc.errors():
        loc = err["loc"]
        path = ""
        label = ""
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        if len(loc) >= 2 and loc[0] == "registers" and isinstance(loc[1], int):
            raw = entries[loc[1]] if loc[1] < len(entries) else None
            if isinstance(raw, dict) and "field" in raw and loc[2:3] != ("field",):
                label = f" ({raw['field']})"
                head = f"registers[{loc[1]}]{label}"
                rest = "".join(f".{p}" for p in loc[2:])
                path = head + rest
        value = err.get("input")
        msg = err["msg"]
        if err["type"] == "literal_error" and loc[-1] == "field":
            msg = f"unknown field {value!r}; known: {', '.join(READING_FIELDS)}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{origin}: {path or '(top level)'}: {msg}")
    return "\n".join(lines)


def load_map(path: str | Path) -> RegisterMap:
    """Load and validate a map file; errors name the file (by its name) and the entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegisterMapError(f"{path}: cannot read register map: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegisterMapError(f"{path.name}: not valid YAML: {exc}") from None
    return RegisterMap.from_dict(data, origin=path.name)


def bundled_models() -> list[str]:
    """Names accepted by `model:`."""
    return sorted(p.stem for p in BUNDLED_MAPS_DIR.glob("*.yaml"))


@cache
def bundled_map(model: str) -> RegisterMap:
    """A bundled map by model name (`sdm630`); `RegisterMapError` lists the known ones."""
    path = BUNDLED_MAPS_DIR / f"{model}.yaml"
    if not path.is_file() or model != path.stem:
        raise RegisterMapError(f"unknown model {model!r}; bundled: {', '.join(bundled_models())}")
    return load_map(path)
