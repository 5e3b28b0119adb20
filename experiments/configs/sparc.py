"""SPARC defaults: affine stream encoders, global TopK, self + cross loss, Adam lr 1e-4.

Launch (planted data, local vs global TopK): python -m experiments.sparc_planted
Launch (real text streams): python -m experiments.sparc_text
The paper's scale is k = 64 of 8192 concepts, batch 256, 50 epochs; ``get_config`` takes the
sizes (not the data's shapes) so the CPU runs can shrink them.
Expected numbers: docs/sparc_results.md.
"""

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig


def get_config(
    *,
    num_concepts: int = 8192,
    top_k: int = 64,
    sparsity: str = "global_topk",
    num_epochs: float | None = 50,
    num_steps: int | None = None,
) -> TrainConfig:
    """The SPARC recipe (set one of epochs or steps); the streams are bound from the data."""
    return TrainConfig(
        usae=USAEConfig(
            num_concepts=num_concepts,
            top_k=top_k,
            architecture="sparc",
            sparsity=sparsity,
            loss="l2_auxk",
            aux="dead_latents",
            aux_coefficient=1 / 32,
            dead_k_aux=512,
            dead_after_tokens=256 * 1000,  # SPARC: dead after 1000 steps of 256 items
        ),
        # Adam at a constant 1e-4: no weight decay, no clipping, no warmup, final = base.
        optim=OptimConfig(
            learning_rate=1e-4,
            weight_decay=0.0,
            clip_norm=None,
            warmup_steps=0,
            final_lr=1e-4,
        ),
        batch_rows=256,
        num_epochs=None if num_steps is not None else num_epochs,
        num_steps=num_steps,
        checkpoint_every=5000,
        log_every=500,
        progress_bar=False,
    )
