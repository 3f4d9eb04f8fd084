"""Training the tiny demo model from scratch: first the VAE, then the UNet (and image encoder), then export.

Two stages, each resumable, in one run folder RUN_DIR (RUN_DIR/vae/, then RUN_DIR/unet/), and an
export of the result. One file per concern:

  loop.py            the generic loop every stage plugs into: TrainConfig, the learning-rate
                     schedule, EMA, one optimizer step, checkpoints, `fit` (DDP or FSDP under torchrun)
  initialization.py  `init_for_training`, the initialization for training from scratch
  clips.py           the training clips: MovingShapes batches, random windows of frames, crops
  vae_stage.py       the VAE stage: its loss, `train_vae`, the measured scaling_factor
  unet_stage.py      the UNet stage: the clip pool, the EDM loss, its FSDP units, `train_unet`
  export.py          the run's EMA weights as one official-layout .safetensors file

Every name is importable from `svd_core.train` itself (`svd_core.train.train_vae`, ...).
"""

from .clips import clips_batch, moving_shapes, random_crop, random_window
from .export import export
from .initialization import INITIAL_LOGVAR, init_for_training
from .loop import (
    CHECKPOINT_NAME,
    EMA,
    TrainConfig,
    TrainingError,
    fit,
    learning_rate,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    step_generator,
    train_step,
)
from .unet_stage import (
    POOL_NAME,
    UNetTrainConfig,
    drop_conditioning,
    encode_pool,
    pool_indices,
    train_unet,
    unet_loss,
    unet_stage_fsdp_units,
    unet_stage_model,
)
from .vae_stage import (
    VAE_FINAL_NAME,
    VAETrainConfig,
    detail_weights,
    measure_latent_std,
    train_vae,
    vae_loss,
)

__all__ = [
    "CHECKPOINT_NAME",
    "EMA",
    "INITIAL_LOGVAR",
    "POOL_NAME",
    "TrainConfig",
    "TrainingError",
    "UNetTrainConfig",
    "VAETrainConfig",
    "VAE_FINAL_NAME",
    "clips_batch",
    "detail_weights",
    "drop_conditioning",
    "encode_pool",
    "export",
    "fit",
    "init_for_training",
    "learning_rate",
    "load_checkpoint",
    "make_optimizer",
    "measure_latent_std",
    "moving_shapes",
    "pool_indices",
    "random_crop",
    "random_window",
    "save_checkpoint",
    "step_generator",
    "train_step",
    "train_unet",
    "train_vae",
    "unet_loss",
    "unet_stage_fsdp_units",
    "unet_stage_model",
    "vae_loss",
]
