"""Flags generated from a config dataclass: one per field, the field's docstring as help, the
dataclass's defaults, and a round trip back to the dataclass that keeps its validation."""

import dataclasses
import os
import subprocess
import sys
from typing import Literal

import pytest
from absl import flags

from experiments.config_flags import define_flags, define_named_paths, field_docs
from usae_jax.pipelines.sparc_text import SparcTextConfig
from usae_jax.validation import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RENAMES = {"num_sentences": "sentences"}


@dataclasses.dataclass(kw_only=True, frozen=True)
class Toy:
    """A config with every kind of field the flags support."""

    size: int
    """Rows per step (required: no default)."""
    rate: float = 0.5
    """A rate
    written over two lines."""
    name: str | None = None
    """A name, or None."""
    mode: Literal["a", "b"] = "a"
    """One of two modes."""
    grid: tuple[int, ...] = (2, 3)
    """Sides of a grid."""
    fast: bool = False
    """Go fast."""

    def __post_init__(self):
        require(self.size > 0, "size", self.size, "must be > 0")


def _parse(cls, argv, **kw):
    values = flags.FlagValues()
    settings = define_flags(cls, flag_values=values, **kw)
    values(["prog", *argv])
    return settings, values


def test_one_flag_per_field_with_the_dataclass_defaults():
    settings, values = _parse(SparcTextConfig, [], names=RENAMES)
    fields = {f.name for f in dataclasses.fields(SparcTextConfig)}
    flag_names = {RENAMES.get(name, name) for name in fields}
    assert set(values) == flag_names and dict(settings.flag_names).keys() == fields
    default = SparcTextConfig()
    for field in fields:
        assert values[RENAMES.get(field, field)].default == getattr(default, field)
    assert values["pooling"].parser.enum_values == ["mean", "first"]  # a Literal: an enum flag
    assert settings.build() == default


def test_help_is_the_field_docstring():
    _, values = _parse(SparcTextConfig, [], names=RENAMES)
    docs = field_docs(SparcTextConfig)
    assert docs.keys() == {f.name for f in dataclasses.fields(SparcTextConfig)}
    assert values["second"].help.endswith(docs["second"])  # after absl's <a|b> enum prefix
    assert "randomly initialised BERT, NOT pretrained" in values["second"].help
    assert values["sentences"].help.startswith("Template sentences (items)")
    assert field_docs(Toy)["rate"] == "A rate written over two lines."


def test_round_trip_overrides_only_the_flags_given():
    argv = ["--sentences=96", "--batch_rows=32", "--second=minilm_layer", "--second_layer=3"]
    settings, _ = _parse(SparcTextConfig, argv, names=RENAMES)
    want = SparcTextConfig(num_sentences=96, batch_rows=32, second="minilm_layer", second_layer="3")
    assert settings.overrides().keys() == {"num_sentences", "batch_rows", "second", "second_layer"}
    assert settings.build() == want
    assert settings.build(seed=7) == dataclasses.replace(want, seed=7)

    settings, _ = _parse(Toy, ["--size=3", "--grid=4,5,6", "--name=x", "--mode=b", "--fast"])
    assert settings.build() == Toy(size=3, grid=(4, 5, 6), name="x", mode="b", fast=True)
    assert _parse(Toy, ["--size=1"])[0].build() == Toy(size=1)


def test_a_bad_value_gives_the_dataclass_error():
    settings, _ = _parse(SparcTextConfig, ["--top_k=0"], names=RENAMES)
    with pytest.raises(ValueError, match=r"^top_k=0: must be in \[1, num_concepts=1024\]"):
        settings.build()
    settings, _ = _parse(Toy, ["--size=-2"])
    with pytest.raises(ValueError, match="^size=-2: must be > 0"):
        settings.build()
    with pytest.raises(flags.IllegalFlagValueError):  # the required field has no default
        _parse(Toy, [])


def test_unsupported_fields_and_unknown_names_are_clear_errors():
    @dataclasses.dataclass
    class Nested:
        inner: Toy
        """A nested config."""

    with pytest.raises(TypeError, match="Nested.inner: no flag type"):
        define_flags(Nested, flag_values=flags.FlagValues())
    assert define_flags(Nested, skip=("inner",), flag_values=flags.FlagValues()).flag_names == {}
    with pytest.raises(KeyError, match="sentence"):
        define_flags(SparcTextConfig, names={"sentence": "s"}, flag_values=flags.FlagValues())


def test_the_entry_point_help_shows_each_field_docstring():
    done = subprocess.run(
        [sys.executable, "-m", "experiments.sparc_text", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    text = " ".join(done.stdout.split())
    assert "--sentences:" in text, done.stderr[-2000:]  # absl's --help exits with status 1
    for field, doc in field_docs(SparcTextConfig).items():
        assert f"--{RENAMES.get(field, field)}:" in text
        assert doc[:40] in text, field
    assert "(default: '4000')" in text and "--workdir:" in text


def test_named_paths_parse_in_order_and_refuse_malformed_entries():
    values = flags.FlagValues()
    define_named_paths("npy", "Activations.", flag_values=values)
    values(["prog"])
    assert values.npy == {}
    values(["prog", "--npy=dino=a.npy,vit=/x/b=c.npy"])  # only the first "=" separates
    assert list(values.npy.items()) == [("dino", "a.npy"), ("vit", "/x/b=c.npy")]
    assert values["npy"].serialize() == "--npy=dino=a.npy,vit=/x/b=c.npy"
    for bad, message in [
        ("a.npy", "'a.npy' is not name=path"),
        ("=a.npy", "'=a.npy' is not name=path"),
        ("dino=", "'dino=' is not name=path"),
        ("a=x.npy,a=y.npy", "model 'a' is given twice"),
    ]:
        with pytest.raises(flags.IllegalFlagValueError, match=message):
            values(["prog", f"--npy={bad}"])
