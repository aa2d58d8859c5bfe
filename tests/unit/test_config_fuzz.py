"""Property-based: whatever the file and the environment hold, `load_config` answers
with a Config or a ConfigError whose every line names where the problem is (the
file, or `environment VAR`), and never with any other exception."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hypothesis.configuration
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_gateway.config.loader import ENV_PREFIX, ConfigError, load_config
from meter_gateway.config.schema import Config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"

# No example database: nothing is written into the repository, and every run is fresh.
FUZZ = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DEFAULTS: dict[str, dict[str, Any]] = Config().model_dump(mode="json")
SECTIONS = sorted(DEFAULTS)
KEYS = sorted({key for section in DEFAULTS.values() for key in section} | {"password_file"})


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis caches what it learns (constants, Unicode tables) even without a
    database; for these tests that goes to a temporary directory, not the tree."""
    before = getattr(hypothesis.configuration, "__hypothesis_home_directory", None)
    hypothesis.configuration.set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    hypothesis.configuration.set_hypothesis_home_dir(before)


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "gw.yaml"


def assert_answers(path: Path | None, env: Mapping[str, str]) -> Config | None:
    """A Config, or a ConfigError whose lines each name the file or a variable."""
    try:
        cfg = load_config(path, env=env)
    except ConfigError as exc:
        errors = exc.errors
    else:
        assert isinstance(cfg, Config)
        return cfg
    assert errors
    if errors:
        for line in errors:
            assert "\n" not in line, line
            assert line.startswith((f"{path}: ", f"{path} with environment ", "environment ")), line
            if line.startswith("environment "):
                named = (f"environment {v}" for var in env for v in (var, repr(var)))
                assert any(line.startswith(n) for n in named), line
            assert "internal error" not in line, line
    return None


# -- (a) arbitrary bytes -------------------------------------------------------------------

YAML_CHARS = [*":-[]{},&*!|>'\"#%@`?\n \t\r0123456789abexyz._~\\", "\x00", "é", "\ufeff"]

file_bytes = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(alphabet=st.sampled_from(YAML_CHARS), max_size=120).map(str.encode),
    st.text(alphabet=st.sampled_from(YAML_CHARS), max_size=80).map(lambda t: t.encode("utf-16")),
)


@pytest.mark.slow
@settings(FUZZ, max_examples=1200)
@given(blob=file_bytes)
def test_any_bytes(cfg_file: Path, blob: bytes) -> None:
    cfg_file.write_bytes(blob)
    assert_answers(cfg_file, {})


# -- (b) YAML documents built from random structures --------------------------------------

TAGS = [
    "!!str ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!null ",
    "!!binary ",
    "!!timestamp ",
    "!!set ",
    "!!omap ",
    "!!map ",
    "!!seq ",
    "!!python/object:os.system ",
    "!foo ",
    "! ",
]

plain_words = st.sampled_from(
    [
        "x",
        "0x",
        "0b",
        "1_0",
        "-",
        ".inf",
        "-.inf",
        ".nan",
        "1e400",
        "1.0e+400",
        "~",
        "null",
        "yes",
        "off",
        "2024-01-01",
        "2001-12-14t21:59:43.10-05:00",
        "=",
        "<<",
        "127.0.0.1:9108",
        "http://127.0.0.1:8086",
        "v1",
        "ns",
        "./var",
        "/",
        "/dev/zero",
        "/etc/passwd",
        "9" * 400,
        "9" * 5000,
        "a" * 300,
    ]
)

scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans().map(str),
    st.text(max_size=30).map(json.dumps),  # double-quoted, \u escapes (surrogates too)
    plain_words,
).map(str)


def _values(leaf: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.sampled_from([*KEYS, "1", "null", "[a]", "'<<'"]), inner, max_size=4
            ),
        ),
        max_leaves=8,
    )


class Emitter:
    """Flow-style YAML from a structure, with the seed deciding the rest: a tag on
    some nodes, an anchor `&a` on the first value and aliases `*a` to it here and
    there (one inside its own anchor's value is a cycle, which is fine to feed in)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.odd = seed != 0  # seed 0, where hypothesis shrinks to: plain YAML
        self.anchored = False

    def __call__(self, value: Any) -> str:
        rng = self.rng
        if self.odd and self.anchored and rng.random() < 0.03:
            return "*a"  # YAML puts no tag on an alias
        head = ""
        if self.odd and not self.anchored and rng.random() < 0.5:
            head, self.anchored = "&a ", True
        if self.odd and rng.random() < 0.1:
            head += rng.choice(TAGS)
        if isinstance(value, list):
            return f"{head}[{', '.join(self(v) for v in value)}]"
        if isinstance(value, dict):
            return f"{head}{{{', '.join(f'{k}: {self(v)}' for k, v in value.items())}}}"
        return f"{head}{value}"


def section_strategy(name: str) -> st.SearchStrategy[dict[str, Any]]:
    keys = sorted(DEFAULTS[name])
    # The shipped default (as YAML), often: so that many documents are valid, and the
    # checks that only run on valid ones (data_dir, topology, TLS) run too.
    value = st.one_of(
        st.sampled_from([json.dumps(DEFAULTS[name][k]) for k in keys]), _values(scalars)
    )
    return st.dictionaries(st.sampled_from([*keys, "nope"]), value, max_size=4)


documents = st.builds(
    lambda sections, extra, seed: (sections, extra, seed),
    st.fixed_dictionaries({}, optional={name: section_strategy(name) for name in SECTIONS}),
    st.one_of(
        st.just({}),
        st.dictionaries(st.sampled_from(["1", "null", "x", "[a]"]), _values(scalars), max_size=1),
    ),
    st.integers(0, 2**32),
)


def render(doc: tuple[dict[str, Any], dict[str, Any], int], block: bool) -> str:
    sections, extra, seed = doc
    emit = Emitter(seed)
    lines = []
    for name, body in {**sections, **extra}.items():
        if block and isinstance(body, dict) and body:
            lines.append(f"{name}:")
            lines.extend(f"  {k}: {emit(v)}" for k, v in body.items())
        else:
            lines.append(f"{name}: {emit(body)}")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@settings(FUZZ, max_examples=500)
@given(doc=documents, block=st.booleans())
def test_yaml_documents(cfg_file: Path, doc: Any, block: bool) -> None:
    cfg_file.write_text(render(doc, block), encoding="utf-8", errors="surrogatepass")
    assert_answers(cfg_file, {})


def test_the_generator_reaches_valid_configs(cfg_file: Path) -> None:
    """Without this the properties above could pass by never getting past YAML."""
    doc = ({"mqtt": {"port": "1884"}, "validation": {"max_age_s": "60"}}, {}, 0)
    cfg_file.write_text(render(doc, block=True))
    cfg = assert_answers(cfg_file, {})
    assert cfg is not None
    assert cfg.mqtt.port == 1884


# -- (c) random environment overrides ------------------------------------------------------

name_parts = st.one_of(
    st.sampled_from([s.upper() for s in SECTIONS]),
    st.sampled_from([k.upper() for k in KEYS]),
    st.sampled_from(["", "0", "1", "99", "TLS", "SUBSCRIPTIONS", "DEVICES", "X"]),
    st.text(max_size=6),
)
env_values = st.one_of(
    scalars,
    st.builds(lambda v, seed: Emitter(seed)(v), _values(scalars), st.integers(0, 2**32)),
    st.text(max_size=40),
    st.sampled_from(["", " ", "{}", "[]", "*a", "&a x", "!!float x", "[[[[[[[[", "#x", "@x"]),
)
environments = st.dictionaries(
    st.lists(name_parts, min_size=0, max_size=4).map(lambda p: ENV_PREFIX + "__".join(p)),
    env_values,
    max_size=4,
)


@pytest.mark.slow
@FUZZ
@given(env=environments, with_file=st.sampled_from([None, "example", "scalar", "list"]))
def test_environment_overrides(cfg_file: Path, env: dict[str, str], with_file: str | None) -> None:
    path: Path | None = None
    if with_file == "example":
        path = cfg_file.with_name("defaults.yaml")
        if not path.exists():  # every key, as JSON (which is YAML): quicker to parse
            path.write_text(json.dumps(DEFAULTS))
    elif with_file == "scalar":  # sections that are no mappings, for paths through them
        cfg_file.write_text("mqtt: 5\nmodbus: {devices: []}\nvalidation: &v {max_age_s: 9}\n")
        path = cfg_file
    elif with_file == "list":
        cfg_file.write_text("mqtt: {subscriptions: [{topic: a, format: json}]}\nhttp: [1]\n")
        path = cfg_file
    assert_answers(path, env)
