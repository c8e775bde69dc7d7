"""Training strategies: MRL and the baselines it is compared with, one per file, selected by name."""

from hf_mrl.hub.summary import register_method_text
from hf_mrl.training.strategies.base import DistillStrategy, Strategy
from hf_mrl.training.strategies.fixmatch import FixMatch
from hf_mrl.training.strategies.mean_teacher import MeanTeacher
from hf_mrl.training.strategies.mr_bs import BestSingle
from hf_mrl.training.strategies.mr_cr import ConsistentReuse
from hf_mrl.training.strategies.mrl import MRL
from hf_mrl.training.strategies.oracle import OracleRouting
from hf_mrl.training.strategies.pseudo_label import PseudoLabel
from hf_mrl.training.strategies.supervised import Supervised
from hf_mrl.training.strategies.vat import VirtualAdversarial

STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(strategy: type[Strategy]) -> type[Strategy]:
    """Make `strategy` a `--method` value (its `name`), with its card text; usable as a class decorator."""
    text = strategy.card_text()  # a strategy without card text fails here, not when its card is rendered
    STRATEGIES[strategy.name] = strategy
    register_method_text(strategy.name, text)
    return strategy


for _strategy in (
    Supervised,
    PseudoLabel,
    MeanTeacher,
    VirtualAdversarial,
    FixMatch,
    BestSingle,
    ConsistentReuse,
    MRL,
    OracleRouting,
):
    register_strategy(_strategy)

# The `--method` values, in table order; "oracle" reads domain labels: a reference only, never a method to deliver.
METHODS: tuple[str, ...] = tuple(STRATEGIES)

__all__ = ["METHODS", "STRATEGIES", "Strategy", "DistillStrategy", "get_strategy", "register_strategy"] + [
    s.__name__ for s in STRATEGIES.values()
]


def get_strategy(name: str) -> type[Strategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"Unknown method {name!r}; choose one of {sorted(STRATEGIES)}.") from None
