"""The ``finetune`` pass's recipe keys: one pydantic model per table, unknown keys refused.

Example::

    [[passes]]
    name = "finetune"
    [passes.config]
    epochs = 3
    lr = 1e-3
    schedule = "cosine"
    warmup_ratio = 0.1
    objective = "task"            # or "distill": learn the unoptimized model's outputs
    [passes.config.adversarial]
    method = "pgd"                # fgsm | pgd | freelb | none | an attack a plugin registers
    epsilon = 0.1
    steps = 7
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fxopt.engine.pass_base import PassConfig


class AdversarialConfig(PassConfig):
    """The perturbation trained against (and evaluated under, as PGD of the same strength)."""

    method: str = Field(
        default="none", description="fgsm, pgd, freelb, none, or an attack a plugin registers"
    )
    epsilon: float = Field(default=0.03, gt=0, description="radius of the perturbation ball")
    step_size: float | None = Field(
        default=None,
        gt=0,
        description="per-iteration step (default: 1.25*eps for fgsm, 2.5*eps/steps for pgd, "
        "eps/steps for freelb)",
    )
    steps: int = Field(default=7, ge=1, description="iterations of pgd / freelb")
    norm: Literal["linf", "l2"] = "linf"
    target: Literal["auto", "embeddings", "pixels"] = Field(
        default="auto",
        description="what is perturbed: the input embeddings (text) or the float input (images)",
    )
    random_start: bool = Field(default=True, description="start inside the ball, not at 0")
    clamp: tuple[float, float] | None = Field(
        default=None, description="valid [min, max] of perturbed pixels, e.g. [0, 1]"
    )
    clean_weight: float = Field(
        default=0.0, ge=0, le=1, description="share of the loss taken on the clean input"
    )


class DistillConfig(PassConfig):
    """Weights of the distillation terms; unset weights are chosen from the task."""

    temperature: float = Field(default=2.0, gt=0, description="softmax temperature of logits KL")
    kl: float | None = Field(default=None, ge=0, description="logits KL (classifiers, LMs)")
    mse: float | None = Field(default=None, ge=0, description="output / hidden-state MSE")
    cosine: float | None = Field(default=None, ge=0, description="1 - cosine of pooled outputs")
    task: float = Field(default=0.0, ge=0, description="task loss weight, when labels exist")
    hidden_layers: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of the original model's modules whose outputs the "
        "student learns too (hidden-state distillation), e.g. model.encoder.layer.*",
    )
    hidden: float = Field(
        default=1.0,
        ge=0,
        description="weight of the hidden-state term (MSE relative to the teacher's mean "
        "square, averaged over the layers)",
    )


class EarlyStopping(PassConfig):
    """Stop on PGD robust accuracy, measured every ``every`` steps on fixed training batches.

    FGSM training can overfit catastrophically (Wong et al., 2020): within a few steps PGD
    accuracy collapses while FGSM accuracy soars. A drop of more than ``max_drop`` below the
    best value stops training and restores the best weights.
    """

    every: int = Field(default=50, ge=1, description="steps between robust-accuracy checks")
    batches: int = Field(default=2, ge=1, description="fine-tune batches the check runs on")
    max_drop: float = Field(default=0.2, gt=0, le=1, description="collapse threshold")
    patience: int | None = Field(
        default=None, ge=1, description="also stop after this many checks without improvement"
    )
    restore_best: bool = True


class FinetuneConfig(PassConfig):
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="overrides epochs")
    batch_size: int | None = Field(
        default=None, ge=1, description="global batch (default: [data.finetune] batch_size)"
    )
    lr: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1, description="floor of the decay")
    grad_clip: float | None = Field(default=1.0, gt=0, description="max global grad norm")
    amp: Literal["off", "auto", "bf16", "fp16"] = Field(
        default="off", description="autocast: auto = bf16 on CPU, fp16 on CUDA"
    )
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    parallel: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="under torchrun: ddp = DistributedDataParallel (every process holds the "
        "whole training state); fsdp = FSDP2 (torch.distributed.fsdp.fully_shard: trained "
        "parameters, gradients and optimizer state sharded across the processes, for models "
        "whose training state does not fit one process). Ignored in a single process",
    )
    train_mode: bool = Field(
        default=True, description="dropout active while training (exported graphs bake it off)"
    )
    batchnorm: Literal["frozen", "train"] = Field(
        default="frozen", description="BatchNorm uses running stats (frozen) or batch stats"
    )
    qat: bool = Field(
        default=True,
        description="train a quantized graph's Q/DQ as fake-quant (quantization-aware training)",
    )
    group_by_length: bool = Field(
        default=False,
        description="batches of similar length, each cut to its longest sequence (by the "
        "attention mask): text trains faster when most samples are shorter than "
        "sequence_length",
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="fnmatch patterns of parameters left unchanged, e.g. "
        "model.embeddings.word_embeddings.* (a vocabulary matrix costs the optimizer as much "
        "as the rest of a small encoder)",
    )
    objective: Literal["task", "distill"] = "task"
    distill: DistillConfig = Field(default_factory=DistillConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    early_stopping: EarlyStopping | None = None
    evaluate: bool = Field(
        default=True, description="clean / robust accuracy and loss before and after"
    )
    eval_robust: bool | None = Field(
        default=None,
        description="robust accuracy under PGD at adversarial.epsilon (default: when an attack "
        "is configured; true measures it for plain fine-tuning too)",
    )
    eval_pgd_steps: int = Field(default=10, ge=1, description="PGD-k used for robust accuracy")
    eval_samples: int | None = Field(default=None, ge=1, description="cap on evaluation samples")
    checkpoint_every: int | None = Field(default=None, ge=1, description="steps; off when unset")
    checkpoint_dir: str | None = Field(
        default=None, description="default: <cache dir>/finetune/<recipe hash>"
    )
    keep_checkpoints: int = Field(default=2, ge=1)
    tensorboard_dir: str | None = Field(default=None, description="write TensorBoard logs here")
    log_every: int = Field(default=10, ge=1, description="steps between loss/LR log points")
    seed: int = 0

    @model_validator(mode="after")
    def _one_warmup(self) -> FinetuneConfig:
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("set warmup_steps or warmup_ratio, not both")
        if self.distill.hidden_layers and self.objective != "distill":
            raise ValueError("distill.hidden_layers needs objective = 'distill'")
        return self
