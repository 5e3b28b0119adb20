"""The paper's configuration (SigLIP, DINOv2, ViT; 6144 concepts, k = 32, 6272 rows, 30 epochs).

Launch:  python -m experiments.train --config=paper --store=/path/to/imagenet_store \
           --workdir=runs/paper
Needs an activation store of the three models' final-layer patch tokens (experiments/extract.py).
Runtime: see README's scaling section (per-step time measured in benchmarks/RESULTS.md).
"""

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig


def get_config(names=None, widths=None) -> TrainConfig:
    """Paper settings; ``names``/``widths`` default to (siglip, dinov2, vit) of 768/384/768."""
    return TrainConfig(
        usae=USAEConfig(
            model_names=tuple(names or ("siglip", "dinov2", "vit")),
            widths=tuple(widths or (768, 384, 768)),
            num_concepts=6144,
            top_k=32,
        ),
        optim=OptimConfig(learning_rate=3e-4, weight_decay=1e-5),
        batch_rows=6272,
        num_epochs=30,
        checkpoint_every=2000,
        log_every=100,
    )
