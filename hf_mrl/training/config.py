"""Training configuration: one validated dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["MRLConfig", "HYPERGRADIENTS", "OUTER_LABELS", "PROTOTYPE_INITS"]

HYPERGRADIENTS = ("fd", "jvp", "unrolled")
OUTER_LABELS = ("shared", "heldout")
PROTOTYPE_INITS = ("labeled", "uniform", "random")


@dataclass
class MRLConfig:
    """Hyperparameters of the bi-level trainer (and of the supervised-only baseline it is compared with).

    Args:
        method: `mrl` (attention reuse, bi-level), a baseline (`supervised`, `pl`, `mean-teacher`, `vat`,
            `fixmatch`, `mr-bs`, `mr-cr`), or `oracle` routing (reads domain labels: a ceiling, not a method).
        max_steps: student optimisation steps.
        batch_size: labeled samples per step, over all processes.
        unlabeled_batch_size: unlabeled samples per step, over all processes.
        learning_rate: student (inner) AdamW learning rate.
        weight_decay: student weight decay.
        kd_lambda: lambda, the weight of the distillation term Omega on unlabeled data.
        kd_temperature: T of the soft distillation loss.
        outer_every: one hypergradient step on the prototypes after this many student steps.
        outer_lr: Adam learning rate of the prototypes and bias (the outer variables phi).
        inner_lr: alpha, the step size of the differentiable unrolled student step.
        unroll_steps: s, the number of unrolled student steps in a hypergradient.
        hypergradient: how the one-step hypergradient is computed: `fd` (default) reuses the training step's
            batch and gradient and takes the Jacobian-vector product it needs by a central finite difference
            (two gradient-free forwards); `jvp` the same with exact forward-mode AD; `unrolled` differentiates
            through the unrolled step(s) with its own batches (second order; needed for unroll_steps > 1).
        direct_weight: beta, the weight of the direct labeled term CE(R_phi(x), y) in the outer loss.
        outer_labels: which labels score the outer objective. `shared`: batches of the whole labeled set, the
            labels the inner CE also trains on. `heldout`: the labeled set is split once (seeded, class-interleaved)
            into `outer_folds` folds; during the `outer_every` steps before outer step c, fold c mod outer_folds is
            left out of the inner CE, and outer step c is scored on that fold only, so the hypergradient measures
            how the reuse generalises to labels the student has not just fitted.
        outer_folds: the number of folds of `outer_labels="heldout"` (>= 2; at most the number of labels).
        prototype_init: `labeled` (each prototype the mean psi of the labeled samples its teacher is best on, the
            bias their log share), `uniform` (zero prototypes and bias: uniform attention until the outer step
            moves it), or `random` (standard normal prototypes in the standardised psi space, zero bias).
        attention_temperature: tau; None means sqrt(p).
        use_bias: a per-teacher attention bias (a global prior over teachers).
        learn_reuse_strength: let the outer problem scale the distillation term by s in (0, 1), so it can
            turn reuse down when the pool cannot help.
        reuse_strength_init: s at the start.
        embedding: the psi spec: `teacher-outputs`, `pixels`, or `encoder:<model id>`.
        augment: random translations of student inputs (teacher outputs stay those of the clean input).
        unlabeled_weight: weight of the unlabeled term of the SSL baselines (PL, mean teacher, VAT, FixMatch).
        confidence_threshold: PL and FixMatch keep pseudo-labels at least this confident.
        ema_decay: the mean teacher's weight averaging (its teacher, which is also the model it evaluates and
            delivers).
        eval_ema_decay: FixMatch only: when > 0, keep an exponential moving average of the student's weights and
            BatchNorm statistics with this decay (warmed up as the mean teacher's) and evaluate and deliver it in
            place of the last iterate, as Sohn et al. (2020) do with 0.999. 0 (the default): no average, the last
            iterate is delivered. In [0, 1).
        vat_epsilon: VAT's perturbation radius, in normalised input units.
        rampup_fraction: PL, mean teacher and VAT ramp their unlabeled weight up over this share of steps.
        seed: seeds initialisation, batch order and augmentation.
        checkpoint_every: save an Accelerate state every this many steps (0: only at the end).
    """

    method: str = "mrl"
    max_steps: int = 1000
    batch_size: int = 64
    unlabeled_batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 5e-4
    kd_lambda: float = 1.0
    kd_temperature: float = 2.0
    outer_every: int = 5
    outer_lr: float = 1e-2
    inner_lr: float = 0.1
    unroll_steps: int = 1
    hypergradient: str = "fd"
    direct_weight: float = 1.0
    outer_labels: str = "shared"
    outer_folds: int = 5
    prototype_init: str = "labeled"
    attention_temperature: float | None = None
    use_bias: bool = True
    learn_reuse_strength: bool = True
    reuse_strength_init: float = 0.95
    embedding: str = "teacher-outputs"
    augment: bool = True
    unlabeled_weight: float = 1.0
    confidence_threshold: float = 0.95
    ema_decay: float = 0.99
    eval_ema_decay: float = 0.0
    vat_epsilon: float = 2.0
    rampup_fraction: float = 0.3
    seed: int = 0
    checkpoint_every: int = 0

    def __post_init__(self):
        from hf_mrl.training.strategies import STRATEGIES as METHODS  # live: strategies registered later count

        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; choose one of {tuple(METHODS)}.")
        for name in ("max_steps", "batch_size", "unlabeled_batch_size", "outer_every", "unroll_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)!r}.")
        for name in ("learning_rate", "outer_lr", "inner_lr", "kd_temperature"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)!r}.")
        for name in (
            "kd_lambda",
            "direct_weight",
            "weight_decay",
            "checkpoint_every",
            "unlabeled_weight",
            "vat_epsilon",
        ):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)!r}.")
        if not 0.0 < float(self.reuse_strength_init) < 1.0:
            raise ValueError(f"reuse_strength_init must lie in (0, 1); got {self.reuse_strength_init!r}.")
        for name in ("confidence_threshold", "ema_decay", "rampup_fraction"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {getattr(self, name)!r}.")
        if not 0.0 <= float(self.eval_ema_decay) < 1.0:
            raise ValueError(f"eval_ema_decay must lie in [0, 1) (0: off); got {self.eval_ema_decay!r}.")
        if float(self.eval_ema_decay) > 0 and self.method != "fixmatch":
            raise ValueError(
                f"eval_ema_decay is implemented for method='fixmatch' only (mean-teacher always evaluates its EMA, "
                f"with ema_decay); got method={self.method!r} with eval_ema_decay={self.eval_ema_decay!r}."
            )
        if self.hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient={self.hypergradient!r} is unknown; choose one of {HYPERGRADIENTS}.")
        if int(self.unroll_steps) > 1 and self.hypergradient != "unrolled":
            raise ValueError(
                f"unroll_steps={self.unroll_steps} needs hypergradient='unrolled' (the first-order "
                f"{self.hypergradient!r} hypergradient unrolls one step)."
            )
        if self.outer_labels not in OUTER_LABELS:
            raise ValueError(f"outer_labels={self.outer_labels!r} is unknown; choose one of {OUTER_LABELS}.")
        if int(self.outer_folds) < 2:
            raise ValueError(f"outer_folds must be >= 2; got {self.outer_folds!r}.")
        if self.prototype_init not in PROTOTYPE_INITS:
            raise ValueError(f"prototype_init={self.prototype_init!r} is unknown; choose one of {PROTOTYPE_INITS}.")
        from hf_mrl.reuse.embedding import Embedding

        Embedding(self.embedding)  # raises ValueError on an unknown spec
        if self.attention_temperature is not None and not self.attention_temperature > 0:
            raise ValueError(f"attention_temperature must be > 0 or None; got {self.attention_temperature!r}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MRLConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown MRLConfig fields {sorted(unknown)}; known fields: {sorted(known)}.")
        return cls(**data)
