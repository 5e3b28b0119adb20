"""The paper's configuration (SigLIP, DINOv2, ViT; 6144 concepts, k = 32, 6272 rows, 30 epochs).

Launch:  python -m experiments.train --config=paper --store=/path/to/imagenet_store \
           --workdir=runs/paper
Needs an activation store of the three models' final-layer patch tokens (experiments/extract.py).
Runtime: see README's scaling section (per-step time measured in benchmarks/RESULTS.md).
"""

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig


def get_config() -> TrainConfig:
    """Paper settings; the models (siglip, dinov2, vit of widths 768/384/768 in the paper) are
    bound from the store."""
    return TrainConfig(
        usae=USAEConfig(num_concepts=6144, top_k=32),
        optim=OptimConfig(learning_rate=3e-4, weight_decay=1e-5),
        batch_rows=6272,
        num_epochs=30,
        checkpoint_every=2000,
        log_every=100,
    )
