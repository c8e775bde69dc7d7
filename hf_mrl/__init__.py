"""hf_mrl: robust reuse of Hub models for targets made of several latent domains (MRL, IJCAI'21)."""

from hf_mrl.data.images import ImageSet
from hf_mrl.data.target import load_target
from hf_mrl.data.types import TargetData
from hf_mrl.pool.model_pool import ModelPool, Teacher
from hf_mrl.reuse.embedding import Embedding
from hf_mrl.reuse.outputs import compute_reuse_inputs
from hf_mrl.reuse.reuser import AttentionReuser
from hf_mrl.training.config import MRLConfig
from hf_mrl.training.reuse_trainer import ReuseArguments, ReuseResult, ReuseTrainer
from hf_mrl.training.trainer import StudentTrainer

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
    "load_target",
]
