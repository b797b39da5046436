"""``finetune``: train the IR in place — task loss or distillation from the original model,
adversarial training (FGSM, PGD, FreeLB on pixels or input embeddings), mixed precision,
checkpoints and resume, and DistributedDataParallel under ``torchrun``.

Attacks are a plugin point: subclass :class:`Attack` and register it through
``fxopt_register_attacks``; the loop calls ``fxopt_train_step_begin/end`` and
``fxopt_adversarial_perturb`` (see ``fxopt.engine.hookspecs``).
"""

from .attacks import FGSM, PGD, Attack, AttackProblem, FreeLB
from .config import AdversarialConfig, DistillConfig, EarlyStopping, FinetuneConfig
from .finetune_pass import Finetune

__all__ = [
    "FGSM",
    "PGD",
    "AdversarialConfig",
    "Attack",
    "AttackProblem",
    "DistillConfig",
    "EarlyStopping",
    "Finetune",
    "FinetuneConfig",
    "FreeLB",
]
