"""Diffusion distillation: a many-step diffusion teacher distilled into a 1-4 step student.

    python -m experiments.diffusion --config configs/diffusion/scd_ring.py \
        --workdir runs/diffusion/scd_ring

Modules: ``trigflow`` (the TrigFlow parameterisation and diffusion loss), ``scm`` (continuous-
time consistency: sCD/sCT with the time derivative by ``jax.jvp``), ``samplers`` (Euler, Heun,
DDIM probability-flow ODE; few-step consistency sampling; classifier-free guidance), ``dmd``
(distribution matching, score distillation, DMD2's GAN losses), ``discrete_cm``,
``progressive``, ``toy`` (2-D distributions with known densities), ``metrics`` (sliced
Wasserstein, MMD, log-density, mode coverage), ``image_metrics`` (digits: in-project
classifier, Frechet distance, class accuracy), ``tasks`` (what the driver trains on: toy data or
digits by class), ``viz`` (scatter plots, image grids), ``train`` (the driver).
"""

from jaxkd.diffusion.train import METHODS, train_and_evaluate

__all__ = ["METHODS", "train_and_evaluate"]
