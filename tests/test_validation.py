"""One validation idiom: every dataclass ``__post_init__`` checks its fields with
``usae_jax.validation.require``, so a bad value always names the field and the value given."""

import ast
from pathlib import Path

import pytest

from usae_jax.analysis.baseline import BaselineConfig
from usae_jax.analysis.cam.optimize import CAMConfig
from usae_jax.analysis.controls import ControlConfig
from usae_jax.analysis.explorer.measures import ExplorerConfig
from usae_jax.analysis.report import AnalysisConfig
from usae_jax.analysis.statistics import StatisticsConfig
from usae_jax.backbones.efficientnet_lite import EfficientNetLiteConfig
from usae_jax.backbones.hed_vgg import HedConfig
from usae_jax.backbones.open_nsfw import ResNetConfig
from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data.extract import ExtractConfig, ModelChoice
from usae_jax.data.gather import GatherConfig
from usae_jax.data.grain_source import PipelineConfig
from usae_jax.data.store import ModelSpec
from usae_jax.data.synthetic.planted import PlantedConfig
from usae_jax.pipelines.sparc_text import SparcTextConfig
from usae_jax.validation import require

PACKAGE = Path(__file__).resolve().parents[1] / "usae_jax"


def test_require_names_the_field_and_the_value():
    require(True, "top_k", 0, "never raised")
    with pytest.raises(ValueError) as err:
        require(False, "top_k", 0, "must be > 0")
    assert str(err.value) == "top_k=0: must be > 0"
    with pytest.raises(ValueError, match=r"^mode='x': 'a' or 'b'$"):
        require(False, "mode", "x", "'a' or 'b'")


def _post_init_raises(root: Path) -> list[str]:
    """``path:line`` of every ``raise`` written directly in a ``__post_init__`` (not via
    :func:`require`)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "__post_init__":
                found += [f"{rel}:{n.lineno}" for n in ast.walk(node) if isinstance(n, ast.Raise)]
    return found


def test_no_post_init_raises_by_hand():
    assert _post_init_raises(PACKAGE) == []


def test_the_walker_finds_a_raise_by_hand(tmp_path):
    (tmp_path / "bad.py").write_text(
        "class C:\n    def __post_init__(self):\n        if self.x < 0:\n"
        "            raise ValueError('x')\n"
    )
    assert _post_init_raises(tmp_path) == ["bad.py:4"]


_USAE = USAEConfig(model_names=("a",), widths=(4,), num_concepts=8, top_k=2)

BAD = [
    (lambda: USAEConfig(num_concepts=0), "num_concepts=0: "),
    (lambda: OptimConfig(b1=1.0), "b1=1.0: "),
    (lambda: TrainConfig(usae=_USAE, num_steps=1, log_every=0), "log_every=0: "),
    (lambda: HedConfig(image_size=1), "image_size=1: "),
    (lambda: ResNetConfig(stem=0), "stem=0: "),
    (lambda: EfficientNetLiteConfig(eps=0.0), "eps=0.0: "),
    (lambda: PlantedConfig(rows=1), "rows=1: "),
    (lambda: PlantedConfig(num_shared=0, num_specific=0), r"num_shared/num_specific=\(0, 0\): "),
    (lambda: ExtractConfig(models=(ModelChoice(name="a", backbone="b"),), grid=(0, 4)), "grid="),
    (lambda: PipelineConfig(threads=-1), "threads=-1: "),
    (lambda: GatherConfig(packages=(), max_flat=0.0), "max_flat=0.0: "),
    (lambda: ModelSpec(name="a/b", width=1), "name='a/b': "),
    (lambda: ModelSpec(name="a", width=1, dtype="int8"), "dtype='int8': "),
    (lambda: ExplorerConfig(page_rows=0), "page_rows=0: "),
    (lambda: AnalysisConfig(min_cofires=0), "min_cofires=0: "),
    (lambda: StatisticsConfig(num_top=0), "num_top=0: "),
    (lambda: BaselineConfig(match_cosine=2.0), "match_cosine=2.0: "),
    (lambda: ControlConfig(kinds=("nope",)), r"kinds=\('nope',\): "),
    (lambda: CAMConfig(rotation_degrees=180.0), "rotation_degrees=180.0: "),
    (lambda: SparcTextConfig(second="other"), "second='other': "),
    (lambda: SparcTextConfig(num_sentences=100, batch_rows=90), "batch_rows=90: "),
]


@pytest.mark.parametrize("build, message", BAD)
def test_bad_values_are_named_with_their_field(build, message):
    with pytest.raises(ValueError, match="^" + message):
        build()
