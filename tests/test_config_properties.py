"""Property-based tests for configuration loading: any input loads or fails with a one-line D3HRError.

Deterministic (``derandomize=True``, no example database). Examples per test: 300 random YAML documents
(config-shaped and free-form nested data), 300 random texts and bytes, 300 random override strings,
300 well-typed overrides; plus, as plain regression cases, minimal inputs that fail on the package as written
(found while writing these properties)."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d3hr.config import Config, load_config, nest, parse_override
from d3hr.errors import D3HRError

# One shrunk failure per property keeps a failing run short; the distinct known failures are listed as regressions.
SETTINGS = {"deadline": None, "derandomize": True, "database": None, "report_multiple_bugs": False,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


def _leaves(cls: type = Config, prefix: str = "") -> dict[str, typing.Any]:
    """Every configurable value: dotted path -> annotated type."""
    out: dict[str, typing.Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_leaves(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hints[f.name]
    return out


LEAVES = _leaves()
SECTIONS = sorted({p.rsplit(".", 1)[0] for p in LEAVES if "." in p})
NAMES = sorted({part for p in LEAVES for part in p.split(".")})

# ---------------------------------------------------------------------------------------------------- strategies

# Text over a few troublesome characters (line breaks, quotes, YAML punctuation), or over any unicode.
TEXT = st.text(st.sampled_from("\n\r\t \\'\":#-_.ab\x85\u2028"), max_size=8) | st.text(max_size=12)
HUGE = st.integers(10**308, 10**400).flatmap(lambda n: st.sampled_from([n, -n]))  # beyond float range
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), HUGE, st.floats(), TEXT,
    st.sampled_from(["group", "random", "mean", "fp32", "bf16", "pad", "auto"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(NAMES) | TEXT, inner, max_size=4),
                      max_leaves=12)


@st.composite
def config_shaped(draw):
    """A mapping laid out like a config (real sections and keys, sometimes a stray key), with arbitrary values."""
    doc: dict[typing.Any, typing.Any] = {}
    for path in draw(st.lists(st.sampled_from(sorted(LEAVES)), max_size=6)):
        node = doc
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = draw(st.one_of(SCALARS, SCALARS, VALUES))  # mostly scalars: they reach the type checks
    if draw(st.booleans()):
        where = draw(st.sampled_from([doc, *[doc[s] for s in doc if isinstance(doc[s], dict)]]))
        where[draw(TEXT | st.integers() | st.sampled_from(NAMES))] = draw(SCALARS)
    return doc


DOCUMENTS = st.one_of(config_shaped(), config_shaped(), VALUES)

# Plain scalars in the forms YAML 1.1 resolves to non-strings (PyYAML's implicit resolvers), and tagged ones.
PLAIN = st.one_of(
    st.from_regex(r"\A[-+]?[0-9][0-9_]{0,30}\Z"), st.from_regex(r"\A-?[1-9][0-9]{308,320}\Z"),  # ints, huge ones
    st.from_regex(r"\A[-+]?0x[0-9a-fA-F_]{1,6}\Z"), st.from_regex(r"\A[-+]?0[0-7_]{1,6}\Z"),
    st.from_regex(r"\A[-+]?[1-9][0-9_]{0,2}(:[0-5]?[0-9]){1,2}(\.[0-9]*)?\Z"),  # sexagesimal
    st.from_regex(r"\A[-+]?[0-9]{0,3}\.[0-9]{0,3}([eE][-+][0-9]{1,3})?\Z"),  # float
    st.from_regex(r"\A[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2})?\Z"),  # timestamp
    st.sampled_from(["~", "null", "true", "False", "yes", "off", ".inf", "-.Inf", ".nan", "", "[]", "{}", "-", "?"]),
    st.text(alphabet="abcxyz019.,:-_ ", max_size=8),
)
TAGS = ["", "", "", "!!int ", "!!float ", "!!bool ", "!!str ", "!!null ", "!!timestamp ", "!!binary ", "!!seq ",
        "!!map ", "!!set ", "!foo ", "!!python/object:os.system "]
TOKEN = st.builds(lambda tag, v: tag + v, st.sampled_from(TAGS), PLAIN)


@st.composite
def yamlish_text(draw):
    """Lines of `key: value` with random indentation, keys from the config, flow collections and anchors."""
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        indent = " " * draw(st.sampled_from([0, 0, 2, 4, 3]))
        key = draw(st.sampled_from(NAMES) | st.text(alphabet="ab.: -", max_size=4))
        value = draw(st.one_of(TOKEN, st.builds(lambda a: "[" + ", ".join(a) + "]", st.lists(TOKEN, max_size=3)),
                               st.builds(lambda k, v: "{" + k + ": " + v + "}", st.sampled_from(NAMES), TOKEN),
                               st.sampled_from(["&a 1", "*a", "|", ">", "- 1", "[", "}", "'", '"', "#x"])))
        lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n---\nout: x\n", "\n...\n"]))


RAW = st.one_of(yamlish_text(), st.text(max_size=60), TEXT, st.binary(max_size=40))

# ---------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("config_properties")


def _one_line(exc: D3HRError) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)


def _load_or_one_line_error(*args, **kwargs) -> Config | None:
    """load_config succeeds, or raises D3HRError with a one-line message; any other exception fails the test."""
    try:
        cfg = load_config(*args, **kwargs)
    except D3HRError as exc:
        _one_line(exc)
        return None
    assert isinstance(cfg, Config)
    return cfg


def _round_trips(cfg: Config, path) -> None:
    """A loaded config writes out as YAML that loads back to the same config (compared as YAML: nan != nan)."""
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    assert load_config(path).to_yaml() == cfg.to_yaml()


# ---------------------------------------------------------------------------------------------------- properties


@settings(max_examples=300, **SETTINGS)
@given(doc=DOCUMENTS)
def test_random_yaml_documents_load_or_fail_with_one_line(workdir, doc):
    path = workdir / "doc.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    cfg = _load_or_one_line_error(path)
    if cfg is not None:
        _round_trips(cfg, workdir / "again.yaml")
        # The same mapping given as an override (not a file) behaves the same way.
        again = load_config(None, [yaml.safe_load(path.read_text(encoding="utf-8")) or {}])
        assert again.to_yaml() == cfg.to_yaml()


@settings(max_examples=300, **SETTINGS)
@given(raw=RAW)
def test_random_text_and_bytes_load_or_fail_with_one_line(workdir, raw):
    path = workdir / "raw.yaml"
    if isinstance(raw, bytes):
        path.write_bytes(raw)
    else:
        path.write_text(raw, encoding="utf-8")
    cfg = _load_or_one_line_error(path)
    if cfg is not None:
        _round_trips(cfg, workdir / "again.yaml")


OVERRIDE_KEYS = st.one_of(st.sampled_from(sorted(LEAVES)), st.sampled_from(SECTIONS + NAMES),
                          st.builds(".".join, st.lists(st.sampled_from(NAMES) | st.text(max_size=4), max_size=3)),
                          TEXT)


@settings(max_examples=300, **SETTINGS)
@given(key=OVERRIDE_KEYS, sep=st.sampled_from(["=", "=", "= ", " =", ""]),
       value=st.one_of(TOKEN, TEXT, VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True))))
def test_random_override_strings_load_or_fail_with_one_line(key, sep, value):
    text = f"{key}{sep}{value}"
    try:
        override = nest(*parse_override(text))
    except D3HRError as exc:
        _one_line(exc)
        assert "=" not in text
        return
    assert isinstance(override, dict)
    _load_or_one_line_error(None, [override])


def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError, OverflowError):
        return True
    return False


def _typed(tp: typing.Any) -> st.SearchStrategy:
    """Values of an annotated config type (optionals include None)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if args and origin is not list:  # unions: None, and for int | str a number or a word not read as one (auto)
        rest = [a for a in args if a is not type(None)]
        values = st.one_of([TEXT.filter(_not_a_number) if a is str and len(rest) > 1 else _typed(a) for a in rest])
        return st.none() | values if len(rest) < len(args) else values
    if origin is list:
        return st.lists(_typed(args[0]), max_size=4)
    return {bool: st.booleans(), int: st.integers(-(10**9), 10**9), float: st.floats(width=64),
            str: TEXT}[tp]


@st.composite
def typed_overrides(draw):
    path = draw(st.sampled_from(sorted(LEAVES)))
    return path, draw(_typed(LEAVES[path]))


def _same(a: typing.Any, b: typing.Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@settings(max_examples=300, **SETTINGS)
@given(case=typed_overrides())
def test_well_typed_overrides_are_applied_exactly_or_rejected_by_name(case):
    """`path=<YAML of a value of the right type>` sets exactly that value, or fails naming the value's key."""
    path, value = case
    text = f"{path}={yaml.safe_dump(value, default_flow_style=True, width=10**6)}"
    try:
        cfg = load_config(None, [nest(*parse_override(text))])
    except D3HRError as exc:
        _one_line(exc)
        assert path.rsplit(".", 1)[-1] in str(exc), (text, str(exc))
        return
    node: typing.Any = cfg
    for part in path.split("."):
        node = getattr(node, part)
    assert _same(node, value), (text, node, value)


# ---------------------------------------------------------------------------------------------------- regressions

# Minimal inputs (shrunk by the properties above) that currently escape as other exception types or
# produce multi-line messages. They must all end as one-line D3HRErrors.
BAD_FILES = {
    "timestamp out of range": "out: 2001-13-01\n",
    "!!bool on a non-boolean": "out: !!bool x\n",
    "!!int on a non-integer": "out: !!int x\n",
    "!!float on a non-number": "out: !!float x\n",
    "integer too large for float (int field)": "seed: 1" + "0" * 309 + "\n",
    "integer too large for float (float field)": "diffusion: {guidance_scale: 1" + "0" * 309 + "}\n",
    "newline in an unknown key": '"a\\nb": 1\n',
    "newline in a validated string": 'data: {fit: "a\\nb"}\n',
    "!!timestamp on a non-date": "out: !!timestamp ~\n",
    "deeply nested flow collections": "[" * 1000,
}


@pytest.mark.parametrize("text", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_minimal_bad_files_give_one_line_errors(workdir, text):
    path = workdir / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(D3HRError) as exc:
        load_config(path)
    _one_line(exc.value)


def test_non_utf8_file_gives_one_line_error(workdir):
    path = workdir / "binary.yaml"
    path.write_bytes(b"\xff")
    with pytest.raises(D3HRError) as exc:
        load_config(path)
    _one_line(exc.value)


BAD_OVERRIDES = {
    "timestamp out of range": "seed=2001-13-01",
    "!!bool on a non-boolean": "seed=!!bool x",
    "!!timestamp on a non-date": "seed=!!timestamp ~",
    "deeply nested flow collections": "seed=" + "[" * 1000,
    "integer too large for float": "seed=1" + "0" * 309,
    "newline in the key": "a\nb=1",
    "newline without =": "a\n",
}


@pytest.mark.parametrize("text", list(BAD_OVERRIDES.values()), ids=list(BAD_OVERRIDES))
def test_minimal_bad_overrides_give_one_line_errors(text):
    with pytest.raises(D3HRError) as exc:
        load_config(None, [nest(*parse_override(text))])
    _one_line(exc.value)
