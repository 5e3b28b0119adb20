"""Configuration dataclasses for the USAE: the model, its optimiser and the training run.

Every field has a docstring; ``__post_init__`` rejects bad values with a message naming the field.
Defaults follow the paper's official code (spec.md sections 2-3) unless a field says otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

LossKind = Literal["l1_auxk", "l2_auxk"]
AuxKind = Literal["top_half", "dead_latents"]
SourceSampling = Literal["random_one", "all"]
ScheduleHorizon = Literal["official", "per_model"]
SparsityRule = Literal["local_topk", "global_topk", "batch_topk", "l1"]
Architecture = Literal["usae", "sparc", "crosscoder"]


def _require(condition: bool, field: str, value, why: str) -> None:
    if not condition:
        raise ValueError(f"{field}={value!r}: {why}")


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
        _require(
            len(set(self.model_names)) == len(self.model_names),
            "model_names",
            self.model_names,
            "names must be unique",
        )
        _require(
            len(self.widths) == len(self.model_names),
            "widths",
            self.widths,
            f"need one width per model ({len(self.model_names)} models)",
        )
        _require(all(w > 0 for w in self.widths), "widths", self.widths, "widths must be > 0")
        _require(self.num_concepts > 0, "num_concepts", self.num_concepts, "must be > 0")
        _require(
            0 < self.top_k <= self.num_concepts,
            "top_k",
            self.top_k,
            f"must be in [1, num_concepts={self.num_concepts}]",
        )
        _require(self.loss in ("l1_auxk", "l2_auxk"), "loss", self.loss, "l1_auxk or l2_auxk")
        _require(self.aux in ("top_half", "dead_latents"), "aux", self.aux, "unknown rule")
        _require(self.aux_coefficient >= 0, "aux_coefficient", self.aux_coefficient, "must be >= 0")
        _require(self.dead_k_aux > 0, "dead_k_aux", self.dead_k_aux, "must be > 0")
        _require(
            0 < self.dead_after_tokens <= 2**31 - 1,
            "dead_after_tokens",
            self.dead_after_tokens,
            "must be in [1, 2**31 - 1] (the int32 counter saturates there)",
        )
        _require(
            0 < self.batchnorm_momentum <= 1,
            "batchnorm_momentum",
            self.batchnorm_momentum,
            "must be in (0, 1]",
        )
        _require(self.batchnorm_eps > 0, "batchnorm_eps", self.batchnorm_eps, "must be > 0")
        _require(
            self.compute_dtype in ("float32", "bfloat16"),
            "compute_dtype",
            self.compute_dtype,
            "float32 or bfloat16",
        )
        self._check_family()

    def _check_family(self):
        """Which objective takes which sparsity rule and options."""
        rules = ("local_topk", "global_topk", "batch_topk", "l1")
        _require(self.sparsity in rules, "sparsity", self.sparsity, f"one of {rules}")
        architectures = ("usae", "sparc", "crosscoder")
        _require(self.architecture in architectures, "architecture", self.architecture, "unknown")
        allowed = {
            "usae": ("local_topk", "batch_topk"),
            "sparc": ("local_topk", "global_topk"),
            "crosscoder": ("local_topk", "batch_topk", "l1"),
        }[self.architecture]
        _require(
            self.sparsity in allowed,
            "sparsity",
            self.sparsity,
            f'architecture="{self.architecture}" takes one of {allowed}',
        )
        _require(
            0 < self.batch_topk_momentum <= 1,
            "batch_topk_momentum",
            self.batch_topk_momentum,
            "must be in (0, 1]",
        )
        _require(self.l1_coefficient >= 0, "l1_coefficient", self.l1_coefficient, "must be >= 0")
        prefixes = self.matryoshka_prefixes
        _require(
            all(a < b for a, b in zip((0, *prefixes), (*prefixes, self.num_concepts), strict=True)),
            "matryoshka_prefixes",
            prefixes,
            f"must increase strictly within (0, num_concepts={self.num_concepts})",
        )
        _require(
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
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(0 <= self.b1 < 1, "b1", self.b1, "must be in [0, 1)")
        _require(0 <= self.b2 < 1, "b2", self.b2, "must be in [0, 1)")
        _require(self.eps > 0, "eps", self.eps, "must be > 0")
        _require(self.clip_norm is None or self.clip_norm > 0, "clip_norm", self.clip_norm, "> 0")
        _require(
            self.warmup_steps is None or self.warmup_steps >= 0,
            "warmup_steps",
            self.warmup_steps,
            "must be >= 0 or None",
        )
        _require(self.warmup_start_lr >= 0, "warmup_start_lr", self.warmup_start_lr, ">= 0")
        _require(self.final_lr >= 0, "final_lr", self.final_lr, "must be >= 0")
        _require(self.horizon in ("official", "per_model"), "horizon", self.horizon, "unknown")


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

    progress_bar: bool = True
    """Show progress: a tqdm bar on a terminal, a plain line every 10% of the steps (or every
    60 s) when stderr is not a terminal (CI, ``nohup`` logs)."""

    def __post_init__(self):
        _require(self.batch_rows > 1, "batch_rows", self.batch_rows, "must be > 1 (BatchNorm)")
        _require(
            (self.num_steps is None) != (self.num_epochs is None),
            "num_steps/num_epochs",
            (self.num_steps, self.num_epochs),
            "set exactly one of them",
        )
        _require(self.num_steps is None or self.num_steps > 0, "num_steps", self.num_steps, "> 0")
        _require(
            self.num_epochs is None or self.num_epochs > 0, "num_epochs", self.num_epochs, "> 0"
        )
        _require(
            self.source_sampling in ("random_one", "all"),
            "source_sampling",
            self.source_sampling,
            "random_one or all",
        )
        _require(
            self.data_parallel is None or self.data_parallel > 0,
            "data_parallel",
            self.data_parallel,
            "must be > 0 or None",
        )
        if self.data_parallel is not None:
            _require(
                self.batch_rows % self.data_parallel == 0,
                "batch_rows",
                self.batch_rows,
                f"must be divisible by data_parallel={self.data_parallel}",
            )
        _require(
            self.concept_parallel > 0
            and self.usae.num_concepts % self.concept_parallel == 0
            and self.usae.num_concepts // self.concept_parallel >= 1,
            "concept_parallel",
            self.concept_parallel,
            f"must be > 0 and divide num_concepts={self.usae.num_concepts}",
        )
        _require(self.checkpoint_every > 0, "checkpoint_every", self.checkpoint_every, "> 0")
        _require(self.keep_checkpoints > 0, "keep_checkpoints", self.keep_checkpoints, "> 0")
        _require(self.log_every > 0, "log_every", self.log_every, "must be > 0")
        _require(self.eval_rows > 1, "eval_rows", self.eval_rows, "must be > 1")

    def total_steps(self, num_rows: int) -> int:
        """Number of training steps for a source of ``num_rows`` rows."""
        if self.num_steps is not None:
            return self.num_steps
        return max(1, int(self.num_epochs * (num_rows // self.batch_rows)))


def to_dict(config) -> dict:
    """A JSON-ready dict of a (nested) config."""
    return dataclasses.asdict(config)


def train_config_from_dict(data: dict) -> TrainConfig:
    """Inverse of :func:`to_dict` for :class:`TrainConfig`.

    Fields missing from ``data`` (written before they existed) take their defaults; unknown
    fields are an error naming them.
    """
    data = dict(data)
    parts = {"usae": (USAEConfig, data.pop("usae")), "optim": (OptimConfig, data.pop("optim"))}
    built = {}
    for key, (cls, values) in parts.items():
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {key} config fields {sorted(unknown)}")
        built[key] = cls(**values)
    unknown = set(data) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training config fields {sorted(unknown)}")
    return TrainConfig(**built, **data)


OPERATIONAL_FIELDS = (
    "data_parallel",
    "concept_parallel",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "eval_rows",
    "progress_bar",
)
"""TrainConfig fields that change how a run is executed or reported, not what it computes: a
run may be resumed with different values of these."""


def training_identity(data: dict) -> dict:
    """The part of a config dict that must match to resume a run: every field that changes the
    math, with defaults filled in for fields the dict predates."""
    full = to_dict(train_config_from_dict(data))
    return {key: value for key, value in full.items() if key not in OPERATIONAL_FIELDS}


def _field_names(cls) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


def check_unique_fields(*classes) -> None:
    """Raise ``TypeError`` if two of the config ``classes`` share a field name (other than the
    fields that nest them): :func:`replace_fields` routes an override by its name alone."""
    seen: dict[str, str] = {}
    for cls in classes:
        for name in _field_names(cls):
            if name in seen:
                raise TypeError(
                    f"config field {name!r} is defined by both {seen[name]} and {cls.__name__}; "
                    "replace_fields needs unique field names"
                )
            seen[name] = cls.__name__


_USAE_FIELDS = _field_names(USAEConfig)
_OPTIM_FIELDS = _field_names(OptimConfig)
check_unique_fields(USAEConfig, OptimConfig, TrainConfig)


def replace_fields(config: TrainConfig, **overrides) -> TrainConfig:
    """``config`` with the non-None ``overrides`` applied, wherever each field lives.

    ``num_steps`` replaces ``num_epochs`` (and vice versa). Validation runs again.
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    usae = {k: v for k, v in overrides.items() if k in _USAE_FIELDS}
    optim = {k: v for k, v in overrides.items() if k in _OPTIM_FIELDS}
    train = {k: v for k, v in overrides.items() if k not in _USAE_FIELDS | _OPTIM_FIELDS}
    if "num_steps" in train:
        train["num_epochs"] = None
    elif "num_epochs" in train:
        train["num_steps"] = None
    return dataclasses.replace(
        config,
        usae=dataclasses.replace(config.usae, **usae),
        optim=dataclasses.replace(config.optim, **optim),
        **train,
    )


def bind_models(config: TrainConfig, names, widths) -> TrainConfig:
    """``config`` with the data source's models: sets ``model_names``/``widths`` of a recipe
    that left them empty, or checks that a bound config names the same models and widths.

    Raises ``ValueError`` naming the disagreement.
    """
    names, widths = tuple(names), tuple(int(w) for w in widths)
    usae = config.usae
    if not usae.is_bound:
        return dataclasses.replace(
            config, usae=dataclasses.replace(usae, model_names=names, widths=widths)
        )
    if usae.model_names != names:
        raise ValueError(f"source models {names} do not match the config's {usae.model_names}")
    for name, have, want in zip(names, widths, usae.widths, strict=True):
        if have != want:
            raise ValueError(
                f"model {name!r}: activations have width {have} but the config says {want}"
            )
    return config
