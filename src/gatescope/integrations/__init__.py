"""Optional integrations with the tools a lab already runs; each needs its extra.

* :mod:`.ray_backend` — run an experiment's groups as Ray tasks (``gatescope run|reproduce
  --backend ray [--address ADDR]``); extra ``gatescope[ray]``.
* :mod:`.loggers` — write a probe's declared quantities to TensorBoard
  (:class:`~gatescope.integrations.loggers.TensorBoardProbeLogger`, extra
  ``gatescope[tensorboard]``) or Weights & Biases
  (:class:`~gatescope.integrations.loggers.WandbProbeLogger`, extra ``gatescope[wandb]``).
* :mod:`.lightning` — a Lightning callback that probes a fixed batch every k steps of
  ``Trainer.fit``; extra ``gatescope[lightning]``.

Nothing here is imported by ``import gatescope``; each module imports its third-party package
only when it is used, and says which extra to install when it is missing
(:class:`~gatescope.integrations.extras.MissingExtra`).
"""
