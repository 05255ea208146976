"""The Ray Tune runner of lucir (DESIGN §2): the trainer as a function trainable, ablation grids,
Optuna search, the shared base-phase cache, MLflow logging, cluster config.

Nothing here implements the algorithm; everything here drives ``lucir.run``.  Submodules import Ray
lazily where they can, so ``import tune`` stays cheap.
"""
