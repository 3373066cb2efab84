"""Seed-ensemble training: E seeds of one configuration trained in one pass.

* :class:`EnsembleTrainer` — stacked parameters, per-seed init and data streams, one
  elementwise ``torch.optim`` optimizer, divergence isolation.
* :class:`StableForcing` — heavy-tailed forcing of the slow-mode updates
  (:func:`slow_mode_parameters`, :func:`standard_stable`).
* :func:`make_optimizer` / :func:`list_optimizers` — ``sgd``, ``momentum``, ``adam``,
  ``adamw``, ``rmsprop``.
* :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`restore_latest` — atomic,
  ``weights_only`` checkpoints; :func:`train_resumable` — the checkpointed training loop.
* :func:`flush_denormals` — subnormal floats flushed to zero while a block runs.
* :func:`derive_seed` / :func:`stream_generator` / :func:`seeded_init` — how a seed
  becomes an initialisation and independent random streams.
"""

from .checkpoints import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    restore_latest,
    save_checkpoint,
)
from .denormals import flush_denormals
from .ensemble import EnsembleTrainer
from .forcing import FORCING_STREAM, StableForcing, slow_mode_parameters, standard_stable
from .forward import NotBatchable, ensemble_linear, ensemble_loss
from .models import task_model_factory
from .optimizers import check_learning_rate, list_optimizers, make_optimizer
from .resumable import train_resumable
from .seeding import DATA_STREAM, EVAL_STREAM, derive_seed, seeded_init, stream_generator

__all__ = [
    "DATA_STREAM",
    "EVAL_STREAM",
    "EnsembleTrainer",
    "FORCING_STREAM",
    "NotBatchable",
    "StableForcing",
    "check_learning_rate",
    "checkpoint_path",
    "derive_seed",
    "ensemble_linear",
    "ensemble_loss",
    "flush_denormals",
    "list_checkpoints",
    "list_optimizers",
    "load_checkpoint",
    "make_optimizer",
    "restore_latest",
    "save_checkpoint",
    "seeded_init",
    "slow_mode_parameters",
    "standard_stable",
    "stream_generator",
    "task_model_factory",
    "train_resumable",
]
