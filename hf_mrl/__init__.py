"""hf_mrl: robust reuse of Hub models for targets made of several latent domains (MRL, IJCAI'21)."""

from .config import MRLConfig
from .embedding import Embedding
from .images import ImageSet
from .pool import ModelPool, Teacher
from .reuse_trainer import ReuseArguments, ReuseResult, ReuseTrainer
from .reuser import AttentionReuser
from .trainer import StudentTrainer, TargetData, compute_reuse_inputs

__version__ = "0.1.0"
__all__ = [
    "AttentionReuser",
    "Embedding",
    "ImageSet",
    "MRLConfig",
    "StudentTrainer",
    "ModelPool",
    "ReuseArguments",
    "ReuseResult",
    "ReuseTrainer",
    "TargetData",
    "Teacher",
    "compute_reuse_inputs",
]
