"""hf_mrl: robust reuse of Hub models for targets made of several latent domains (MRL, IJCAI'21)."""

from hf_mrl.data.images import ImageSet
from hf_mrl.data.target import load_target
from hf_mrl.data.types import TargetData
from hf_mrl.pool.model_pool import ModelPool, Teacher
from hf_mrl.record import Delivered, RunMetrics, read_metrics
from hf_mrl.reuse.embedding import Embedding
from hf_mrl.reuse.outputs import compute_teacher_outputs
from hf_mrl.reuse.reuser import AttentionReuser
from hf_mrl.training.config import MRLConfig
from hf_mrl.training.reuse_trainer import ReuseArguments, ReuseResult, ReuseTrainer
from hf_mrl.training.trainer import StudentTrainer

__version__ = "0.1.0"
__all__ = [
    "AttentionReuser",
    "Delivered",
    "Embedding",
    "ImageSet",
    "MRLConfig",
    "StudentTrainer",
    "ModelPool",
    "ReuseArguments",
    "ReuseResult",
    "ReuseTrainer",
    "RunMetrics",
    "TargetData",
    "Teacher",
    "compute_teacher_outputs",
    "load_target",
    "read_metrics",
]

_RENAMED = {"compute_reuse_inputs": "compute_teacher_outputs"}  # old name -> new, kept for one release (0.2 drops it)


def __getattr__(name: str):
    if name in _RENAMED:
        import warnings

        warnings.warn(
            f"hf_mrl.{name} is now hf_mrl.{_RENAMED[name]}; the old name goes in hf_mrl 0.2.",
            FutureWarning,
            stacklevel=2,
        )
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'hf_mrl' has no attribute {name!r}")
