"""The training configuration, with no torch: ``TrainConfig`` and the names it checks against.

The web process validates hyperparameters against this class (``training.services``) and must
never load torch or transformers, so this module imports the standard library only.
The trainer (``training.trainer``) takes ``TrainConfig`` and ``RECIPE_PHASES`` from here;
``training.losses`` takes ``DPO_LOSS_TYPES``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

RECIPES = ("sft", "dpo", "sft+dpo", "rm", "ppo", "sft+rm+ppo", "sft+dpo+ppo")
#: The phases each of the trainer's own recipes runs, in order (``training.trainer.phases.PHASES``
#: says what each does); a phase's saved model is where the next one starts. The RLHF recipes
#: (``training.rlhf``) chain these with a reward model and PPO.
RECIPE_PHASES = {"sft": ("sft",), "dpo": ("dpo",), "sft+dpo": ("sft", "dpo")}
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "cdpo", "robust")
PPO_VALUE_MODELS = ("reward", "policy", "shared")
RM_MARGINS = ("none", "strength", "p_chosen")


@dataclass
class TrainConfig:
    """Everything a run needs besides the model folder and the data. JSON-serialisable."""

    recipe: str = "dpo"  # "sft" | "dpo" | "sft+dpo" | "rm" | "ppo" | "sft+rm+ppo" | "sft+dpo+ppo"
    # optimisation (per phase; the sft_* fields override for the SFT phase of sft+dpo)
    lr: float = 5e-6
    epochs: float = 1.0  # ignored when max_steps is set
    max_steps: int | None = None  # optimizer steps per phase
    sft_lr: float | None = None
    sft_epochs: float | None = None
    sft_max_steps: int | None = None
    batch_size: int = 4  # pairs per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0  # None: no clipping (the norm is still reported)
    lr_schedule: str = "linear"  # "linear" | "cosine" | "constant" (after warmup)
    warmup_steps: int = 0
    shuffle: bool = True
    # data
    max_length: int = 512  # prompt + one response, in tokens
    # a longer prompt keeps its last tokens; None: as many as the responses leave room for, at least
    # max_length // 2 (training.data.prompt_keep)
    max_prompt_length: int | None = None
    min_pairs: int = 8
    eval_fraction: float = 0.1  # held out for eval (reward accuracy); 0 disables
    eval_every: int = 0  # steps; 0: evaluate at the end of each phase only
    eval_batch_size: int | None = None
    pack: bool | None = None  # pack short units into shared rows; None: on GPU only
    unpadded: bool | None = None  # one trimmed row per forward, no padding; None: on CPU only
    # DPO
    beta: float = 0.1
    loss_type: str = "sigmoid"  # "sigmoid" | "ipo" | "hinge" | "cdpo" | "robust"
    label_smoothing: float = 0.0  # cdpo / robust only
    use_weights: bool = True  # per-pair "weight" from the export
    use_soft_labels: bool = False  # per-pair "p_chosen" as the target probability
    precompute_ref_logps: bool = True
    ref_cache_dir: str | None = None  # default out_dir/cache
    # model
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    gradient_checkpointing: bool = False
    logits_chunk_elements: int = 2**26  # max (tokens x vocab) logits alive at once in the LM head
    # runtime
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 on a bf16-capable GPU, else fp32) | "fp32" | "bf16"
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    cpu_threads: int | None = None  # torch.set_num_threads for this process (None: torch's default)
    checkpoint_every: int = 50  # steps; 0 disables periodic checkpoints
    keep_checkpoints: int = 2
    log_every: int = 1  # on_step every N steps (the last step is always reported)
    # reward model (recipes rm, sft+rm+ppo; training.reward_model). Sources in that module.
    rm_lr: float = 1e-5  # InstructGPT 9e-6, Stiennon et al. 2020 ~1.5e-5
    rm_epochs: float = 1.0  # one epoch: more overfits (Stiennon et al. 2020; InstructGPT)
    rm_max_steps: int | None = None
    rm_margin: str = "none"  # "none" | "strength" (Llama 2) | "p_chosen": Bradley-Terry margin source
    rm_margin_scale: float = 1.0
    rm_center_coef: float | None = None  # TRL center_rewards_coefficient (Eisenstein et al. 2023: 0.01)
    rm_norm_samples: int = 64  # reference-policy samples for the mean-0 / std-1 normalisation; 0: off
    reward_model: str | None = None  # recipe ppo: folder of a trained reward model
    # PPO (recipes ppo, sft+rm+ppo, sft+dpo+ppo; training.ppo / training.ppo_trainer). Sources there.
    ppo_iterations: int | None = None  # rollout+update iterations; None: epochs x prompts / ppo_batch_size
    ppo_lr: float = 3e-6
    ppo_batch_size: int = 16  # prompts (rollouts) per iteration
    ppo_mini_batches: int = 1
    ppo_micro_batch_size: int | None = None  # gradient accumulation inside a minibatch; None: whole one
    ppo_epochs: int = 4
    ppo_clip: float = 0.2
    ppo_value_clip: float = 0.2
    ppo_vf_coef: float = 0.1
    ppo_entropy_coef: float = 0.0
    ppo_gamma: float = 1.0
    ppo_lam: float = 0.95
    ppo_kl_coef: float = 0.05
    ppo_kl_target: float | None = None  # set: adaptive KL coefficient (Ziegler et al. 2019: 6.0)
    ppo_kl_horizon: int = 10000
    ppo_kl_estimator: str = "k1"
    ppo_whiten_rewards: bool = False
    ppo_response_length: int = 53
    ppo_temperature: float = 0.7
    ppo_missing_eos_penalty: float | None = None
    ppo_value_model: str = "shared"  # "shared" | "reward" | "policy" (the critic; sources in training.ppo)
    ppo_checkpoint_every: int = 1  # PPO iterations between checkpoints (resume loses at most these)
    ppo_samples_per_log: int = 3  # sample generations kept with each logged iteration

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        need(self.recipe in RECIPES, f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        need(self.loss_type in DPO_LOSS_TYPES,
             f"loss_type must be one of {DPO_LOSS_TYPES}, got {self.loss_type!r}")
        need(self.lr > 0 and (self.sft_lr is None or self.sft_lr > 0), "lr must be > 0")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1 (or None)")
        need(self.sft_max_steps is None or self.sft_max_steps >= 1, "sft_max_steps must be >= 1 (or None)")
        need(self.epochs > 0 and (self.sft_epochs is None or self.sft_epochs > 0), "epochs must be > 0")
        need(self.max_length >= 2, "max_length must be >= 2")
        need(self.max_prompt_length is None or 1 <= self.max_prompt_length < self.max_length,
             f"max_prompt_length ({self.max_prompt_length}) must be >= 1 and below "
             f"max_length ({self.max_length})")
        need(self.beta > 0, "beta must be > 0")
        need(0 <= self.label_smoothing < 0.5, "label_smoothing must be in [0, 0.5)")
        need(not (self.label_smoothing and self.loss_type not in ("cdpo", "robust")),
             "label_smoothing only applies to loss_type 'cdpo' or 'robust'")
        need(0 <= self.eval_fraction < 1, "eval_fraction must be in [0, 1)")
        need(self.min_pairs >= 1, "min_pairs must be >= 1")
        need(self.precision in ("auto", "fp32", "bf16"),
             f"precision must be auto/fp32/bf16, got {self.precision!r}")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be auto/cpu/cuda, got {self.device!r}")
        need(self.lr_schedule in ("linear", "cosine", "constant"),
             "lr_schedule must be linear/cosine/constant")
        need(self.lora_r >= 1 and self.lora_alpha > 0, "lora_r must be >= 1 and lora_alpha > 0")
        need(self.checkpoint_every >= 0 and self.keep_checkpoints >= 1,
             "checkpoint_every must be >= 0 and keep_checkpoints >= 1")
        need(not (self.use_soft_labels and self.loss_type == "robust"),
             "soft labels are not defined for loss_type 'robust'")
        need(self.rm_lr > 0 and self.ppo_lr > 0, "rm_lr and ppo_lr must be > 0")
        need(self.rm_epochs > 0, "rm_epochs must be > 0")
        need(self.rm_max_steps is None or self.rm_max_steps >= 1, "rm_max_steps must be >= 1 (or None)")
        need(self.rm_margin in RM_MARGINS, f"rm_margin must be one of {RM_MARGINS}, got {self.rm_margin!r}")
        need(self.rm_norm_samples >= 0, "rm_norm_samples must be >= 0")
        need(self.ppo_iterations is None or self.ppo_iterations >= 1, "ppo_iterations must be >= 1 (or None)")
        need(self.ppo_batch_size >= 1 and 1 <= self.ppo_mini_batches <= self.ppo_batch_size,
             "ppo_batch_size must be >= 1 and ppo_mini_batches in [1, ppo_batch_size]")
        need(self.ppo_micro_batch_size is None or self.ppo_micro_batch_size >= 1,
             "ppo_micro_batch_size must be >= 1 (or None)")
        need(self.ppo_epochs >= 1, "ppo_epochs must be >= 1")
        need(self.ppo_clip > 0 and self.ppo_value_clip > 0, "ppo_clip and ppo_value_clip must be > 0")
        need(self.ppo_vf_coef >= 0 and self.ppo_entropy_coef >= 0, "ppo_vf_coef and ppo_entropy_coef must be >= 0")
        need(0 < self.ppo_gamma <= 1 and 0 <= self.ppo_lam <= 1, "ppo_gamma must be in (0, 1], ppo_lam in [0, 1]")
        need(self.ppo_kl_coef >= 0, "ppo_kl_coef must be >= 0")
        need(self.ppo_kl_target is None or self.ppo_kl_target > 0, "ppo_kl_target must be > 0 (or None)")
        need(self.ppo_kl_horizon >= 1, "ppo_kl_horizon must be >= 1")
        need(self.ppo_kl_estimator in ("k1", "k2", "k3"), "ppo_kl_estimator must be k1, k2 or k3")
        need(self.ppo_response_length >= 1, "ppo_response_length must be >= 1")
        need(self.ppo_temperature > 0, "ppo_temperature must be > 0")
        need(self.ppo_missing_eos_penalty is None or self.ppo_missing_eos_penalty >= 0,
             "ppo_missing_eos_penalty must be >= 0 (it is subtracted)")
        need(self.ppo_value_model in PPO_VALUE_MODELS,
             f"ppo_value_model must be one of {PPO_VALUE_MODELS}, got {self.ppo_value_model!r}")
        need(self.ppo_checkpoint_every >= 0 and self.ppo_samples_per_log >= 0,
             "ppo_checkpoint_every and ppo_samples_per_log must be >= 0")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict (e.g. a TrainingRun's hyperparameters); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        values = dict(values)
        for key in ("adam_betas", "lora_target_modules"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)
