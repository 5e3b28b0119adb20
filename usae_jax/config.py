"""Configuration dataclasses for the USAE: the model, its optimiser and the training run.

Every field has a docstring; ``__post_init__`` rejects bad values with a message naming the field.
Defaults follow the paper's official code (spec.md sections 2-3) unless a field says otherwise.
Reading, writing, overriding and binding configs (``bind_models``): :mod:`usae_jax.config_io`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from usae_jax.validation import require

LossKind = Literal["l1_auxk", "l2_auxk"]
AuxKind = Literal["top_half", "dead_latents"]
SourceSampling = Literal["random_one", "all"]
ScheduleHorizon = Literal["official", "per_model"]
SparsityRule = Literal["local_topk", "global_topk", "batch_topk", "l1"]
Architecture = Literal["usae", "sparc", "crosscoder"]


@dataclasses.dataclass(kw_only=True, frozen=True)
class USAEConfig:
    """The universal sparse autoencoder: which models share the concept space, and how."""

    model_names: tuple[str, ...] = ()
    """Names of the models whose activations share one concept space, e.g. ("siglip", "dino").
    Empty in a recipe: :func:`bind_models` (called by the training loop) takes them from the
    data source."""

    widths: tuple[int, ...] = ()
    """Activation width d_m of each model, in the order of ``model_names`` (bound with them)."""

    num_concepts: int = 6144
    """Number of concepts n (rows of every dictionary). The paper uses 8 x 768 = 6144."""

    top_k: int = 32
    """Number k of concepts kept per row by the TopK sparsity."""

    loss: LossKind = "l1_auxk"
    """Reconstruction loss: "l1_auxk" (official default, mean absolute error) or "l2_auxk"."""

    aux: AuxKind = "top_half"
    """Auxiliary loss: "top_half" (official: the top n//2 unchosen codes predict the residual) or
    "dead_latents" (Gao et al. 2024: the top ``dead_k_aux`` dead latents do; a departure)."""

    aux_coefficient: float = 0.1
    """Weight of the auxiliary loss term (official 0.1; Gao et al. use 1/32)."""

    dead_k_aux: int = 512
    """For aux="dead_latents": at most this many dead latents reconstruct the residual (capped at
    the number of concepts)."""

    dead_after_tokens: int = 10_000_000
    """For aux="dead_latents": a concept is dead after this many tokens without firing (at most
    ``2**31 - 1``, where the int32 counter saturates)."""

    batchnorm_momentum: float = 0.1
    """BatchNorm running-statistics momentum (torch convention: new = 0.9 old + 0.1 batch)."""

    batchnorm_eps: float = 1e-5
    """BatchNorm epsilon added to the variance."""

    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """Matrix products on bfloat16 inputs with float32 accumulation ("bfloat16"), or all
    float32. Parameters, optimiser states, BatchNorm and losses are float32 either way."""

    sparsity: SparsityRule = "local_topk"
    """"local_topk" (USAE: each encoder picks its own k; a crosscoder: its one code keeps k per
    row), "global_topk" (SPARC: the logits are summed over streams and one set of k indices per
    row is kept in every stream; needs ``architecture="sparc"``), "batch_topk" (Bussmann et al.
    2024: the ``B * k`` largest activations of the whole batch in training, one running
    threshold at inference; :mod:`usae_jax.model.batch_topk`) or "l1" (crosscoder only: ReLU
    codes and an L1 penalty weighted by the summed decoder norms, ``l1_coefficient``)."""

    architecture: Architecture = "usae"
    """"usae": Linear -> BatchNorm -> ReLU -> TopK encoders trained by the USAE step (one source
    model per step, or all, see ``TrainConfig.source_sampling``). "sparc": affine stream encoders
    ``h = x @ W + b`` (no BatchNorm) and the SPARC step of :mod:`usae_jax.model.sparc` (every stream
    encoded every step; self + cross reconstruction + dead-latent AuxK), with either TopK rule;
    ``source_sampling`` is then ignored. "crosscoder" (Lindsey et al. 2024): one code read from
    every model at once, per-model unnormalised decoders with biases
    (:mod:`usae_jax.model.crosscoder`); needs ``source_sampling="all"``."""

    batch_topk_momentum: float = 0.01
    """For sparsity="batch_topk": weight of each batch's smallest selected score in the running
    inference threshold (``new = (1 - m) old + m batch``). dictionary_learning uses 0.001 from
    step 1000 on; 0.01 from the first step suits short runs (a departure)."""

    matryoshka_prefixes: tuple[int, ...] = ()
    """Matryoshka (Bussmann et al. 2025): increasing prefix sizes ``m_1 < m_2 < ... < n``; the
    loss adds, per target model, the reconstruction error of every prefix ``z[:, :m_i] D[:m_i]``
    to that of the whole dictionary, so early concepts must reconstruct on their own. Empty: off.
    Not with ``architecture="sparc"``."""

    l1_coefficient: float = 1e-3
    """For sparsity="l1" (crosscoder): weight of ``mean_rows sum_c z_c sum_m ||D_m[c]||``."""

    def __post_init__(self):
        object.__setattr__(self, "model_names", tuple(self.model_names))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "matryoshka_prefixes", tuple(self.matryoshka_prefixes))
        require(
            len(set(self.model_names)) == len(self.model_names),
            "model_names",
            self.model_names,
            "names must be unique",
        )
        require(
            len(self.widths) == len(self.model_names),
            "widths",
            self.widths,
            f"need one width per model ({len(self.model_names)} models)",
        )
        require(all(w > 0 for w in self.widths), "widths", self.widths, "widths must be > 0")
        require(self.num_concepts > 0, "num_concepts", self.num_concepts, "must be > 0")
        require(
            0 < self.top_k <= self.num_concepts,
            "top_k",
            self.top_k,
            f"must be in [1, num_concepts={self.num_concepts}]",
        )
        require(self.loss in ("l1_auxk", "l2_auxk"), "loss", self.loss, "l1_auxk or l2_auxk")
        require(self.aux in ("top_half", "dead_latents"), "aux", self.aux, "unknown rule")
        require(self.aux_coefficient >= 0, "aux_coefficient", self.aux_coefficient, "must be >= 0")
        require(self.dead_k_aux > 0, "dead_k_aux", self.dead_k_aux, "must be > 0")
        require(
            0 < self.dead_after_tokens <= 2**31 - 1,
            "dead_after_tokens",
            self.dead_after_tokens,
            "must be in [1, 2**31 - 1] (the int32 counter saturates there)",
        )
        require(
            0 < self.batchnorm_momentum <= 1,
            "batchnorm_momentum",
            self.batchnorm_momentum,
            "must be in (0, 1]",
        )
        require(self.batchnorm_eps > 0, "batchnorm_eps", self.batchnorm_eps, "must be > 0")
        require(
            self.compute_dtype in ("float32", "bfloat16"),
            "compute_dtype",
            self.compute_dtype,
            "float32 or bfloat16",
        )
        self._check_family()

    def _check_family(self):
        """Which objective takes which sparsity rule and options."""
        rules = ("local_topk", "global_topk", "batch_topk", "l1")
        require(self.sparsity in rules, "sparsity", self.sparsity, f"one of {rules}")
        architectures = ("usae", "sparc", "crosscoder")
        require(self.architecture in architectures, "architecture", self.architecture, "unknown")
        allowed = {
            "usae": ("local_topk", "batch_topk"),
            "sparc": ("local_topk", "global_topk"),
            "crosscoder": ("local_topk", "batch_topk", "l1"),
        }[self.architecture]
        require(
            self.sparsity in allowed,
            "sparsity",
            self.sparsity,
            f'architecture="{self.architecture}" takes one of {allowed}',
        )
        require(
            0 < self.batch_topk_momentum <= 1,
            "batch_topk_momentum",
            self.batch_topk_momentum,
            "must be in (0, 1]",
        )
        require(self.l1_coefficient >= 0, "l1_coefficient", self.l1_coefficient, "must be >= 0")
        prefixes = self.matryoshka_prefixes
        require(
            all(a < b for a, b in zip((0, *prefixes), (*prefixes, self.num_concepts), strict=True)),
            "matryoshka_prefixes",
            prefixes,
            f"must increase strictly within (0, num_concepts={self.num_concepts})",
        )
        require(
            not prefixes or self.architecture != "sparc",
            "matryoshka_prefixes",
            prefixes,
            'not supported with architecture="sparc"',
        )

    @property
    def is_bound(self) -> bool:
        """Whether the models (names and widths) are set; see :func:`bind_models`."""
        return len(self.model_names) > 0

    @property
    def num_models(self) -> int:
        """M, the number of models."""
        return len(self.model_names)

    def width_of(self, name: str) -> int:
        """Width of model ``name``."""
        return self.widths[self.model_names.index(name)]


@dataclasses.dataclass(kw_only=True, frozen=True)
class OptimConfig:
    """Per-model AdamW with a warmup-cosine schedule and gradient clipping (official recipe)."""

    learning_rate: float = 3e-4
    """Base (peak) learning rate of every model's AdamW."""

    weight_decay: float = 1e-5
    """Decoupled weight decay of AdamW (torch semantics: p <- p - lr * wd * p)."""

    b1: float = 0.9
    """Adam first-moment decay."""

    b2: float = 0.999
    """Adam second-moment decay."""

    eps: float = 1e-8
    """Adam epsilon, added to sqrt of the bias-corrected second moment."""

    clip_norm: float | None = 1.0
    """Clip each model's gradient to this global norm (torch ``clip_grad_norm_``); None: off."""

    warmup_steps: int | None = None
    """Warmup length in training steps; None means one epoch of the data (official)."""

    warmup_start_lr: float = 1e-6
    """Learning rate at the start of warmup."""

    final_lr: float = 1e-6
    """Learning rate at the end of the cosine decay."""

    horizon: ScheduleHorizon = "official"
    """"official": every model's schedule spans all steps of the run although it advances only
    on that model's steps (so with M models it covers about 1/M of its course); "per_model":
    each schedule spans the steps that model is expected to take (a departure)."""

    def __post_init__(self):
        require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(0 <= self.b1 < 1, "b1", self.b1, "must be in [0, 1)")
        require(0 <= self.b2 < 1, "b2", self.b2, "must be in [0, 1)")
        require(self.eps > 0, "eps", self.eps, "must be > 0")
        require(self.clip_norm is None or self.clip_norm > 0, "clip_norm", self.clip_norm, "> 0")
        require(
            self.warmup_steps is None or self.warmup_steps >= 0,
            "warmup_steps",
            self.warmup_steps,
            "must be >= 0 or None",
        )
        require(self.warmup_start_lr >= 0, "warmup_start_lr", self.warmup_start_lr, ">= 0")
        require(self.final_lr >= 0, "final_lr", self.final_lr, "must be >= 0")
        require(self.horizon in ("official", "per_model"), "horizon", self.horizon, "unknown")


@dataclasses.dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """A training run: model, optimiser, data schedule, parallelism, checkpoints and logs."""

    usae: USAEConfig
    """The USAE being trained."""

    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule (one copy per model)."""

    batch_rows: int = 6272
    """Rows (tokens) per step, global across devices. Paper: 32 images x 196 tokens = 6272."""

    num_steps: int | None = None
    """Total training steps. Exactly one of ``num_steps`` and ``num_epochs`` must be set."""

    num_epochs: float | None = None
    """Total training epochs over the source's rows (converted to steps, rounded down)."""

    seed: int = 0
    """Seed for parameter init, data order and the per-step source-model draw."""

    source_sampling: SourceSampling = "random_one"
    """"random_one" (official: one source model drawn per step, only it is updated) or "all"
    (every model encodes its own rows each step and all M x M reconstructions are summed; every
    model is updated each step; a departure that uses accelerators better)."""

    data_parallel: int | None = None
    """Devices on the mesh's "data" axis; None uses every device (divided by
    ``concept_parallel``). Must divide ``batch_rows``."""

    concept_parallel: int = 1
    """Devices on the mesh's "model" axis: encoders, dictionaries and their optimiser states
    are split along the concept axis (TopK in two stages). Must divide ``num_concepts``."""

    checkpoint_every: int = 500
    """Save an orbax checkpoint every this many steps (and always at the end)."""

    keep_checkpoints: int = 2
    """How many recent checkpoints to keep on disk."""

    log_every: int = 50
    """Write a JSONL metrics line (per-model loss, L0, dead fraction) every this many steps."""

    eval_rows: int = 4096
    """Rows used for the R² matrix in logs and the final report (from the start of the source)."""

    steps_per_dispatch: int = 1
    """Training steps run inside one jitted ``lax.scan`` (their batches staged on the devices as
    ``[steps, batch_rows, width]``); 1 dispatches every step on its own. The math is the same
    (``tests/test_chunked_steps.py``): it only removes per-step dispatch and host overhead, which
    dominates small models. Must divide ``log_every`` and ``checkpoint_every``."""

    retain_freed_memory: bool = True
    """CPU meshes: keep freed host memory mapped for the rest of the process
    (:func:`usae_jax.parallel.host_memory.retain_freed_memory`, glibc's ``mallopt``), so that the
    step's large temporaries, allocated afresh by XLA:CPU at every step, do not page-fault anew
    each time: 0.74x (paper config) and 0.63x (small config) the step time on a 2-core machine
    (``benchmarks/malloc_pages.py``, benchmarks/RESULTS.md); nothing measurable for small
    models. Process-wide; the process keeps its peak heap until exit.
    Ignored on accelerators and outside glibc."""

    progress_bar: bool = True
    """Show progress: a tqdm bar on a terminal, a plain line every 10% of the steps (or every
    60 s) when stderr is not a terminal (CI, ``nohup`` logs)."""

    def __post_init__(self):
        require(self.batch_rows > 1, "batch_rows", self.batch_rows, "must be > 1 (BatchNorm)")
        require(
            (self.num_steps is None) != (self.num_epochs is None),
            "num_steps/num_epochs",
            (self.num_steps, self.num_epochs),
            "set exactly one of them",
        )
        require(self.num_steps is None or self.num_steps > 0, "num_steps", self.num_steps, "> 0")
        require(
            self.num_epochs is None or self.num_epochs > 0, "num_epochs", self.num_epochs, "> 0"
        )
        require(
            self.source_sampling in ("random_one", "all"),
            "source_sampling",
            self.source_sampling,
            "random_one or all",
        )
        require(
            self.data_parallel is None or self.data_parallel > 0,
            "data_parallel",
            self.data_parallel,
            "must be > 0 or None",
        )
        if self.data_parallel is not None:
            require(
                self.batch_rows % self.data_parallel == 0,
                "batch_rows",
                self.batch_rows,
                f"must be divisible by data_parallel={self.data_parallel}",
            )
        require(
            self.concept_parallel > 0
            and self.usae.num_concepts % self.concept_parallel == 0
            and self.usae.num_concepts // self.concept_parallel >= 1,
            "concept_parallel",
            self.concept_parallel,
            f"must be > 0 and divide num_concepts={self.usae.num_concepts}",
        )
        require(self.checkpoint_every > 0, "checkpoint_every", self.checkpoint_every, "> 0")
        require(self.keep_checkpoints > 0, "keep_checkpoints", self.keep_checkpoints, "> 0")
        require(self.log_every > 0, "log_every", self.log_every, "must be > 0")
        require(
            self.steps_per_dispatch > 0
            and self.log_every % self.steps_per_dispatch == 0
            and self.checkpoint_every % self.steps_per_dispatch == 0,
            "steps_per_dispatch",
            self.steps_per_dispatch,
            f"must be > 0 and divide log_every={self.log_every} and "
            f"checkpoint_every={self.checkpoint_every}",
        )
        require(self.eval_rows > 1, "eval_rows", self.eval_rows, "must be > 1")

    def total_steps(self, num_rows: int) -> int:
        """Number of training steps for a source of ``num_rows`` rows."""
        if self.num_steps is not None:
            return self.num_steps
        return max(1, int(self.num_epochs * (num_rows // self.batch_rows)))
