"""jaxkd: a JAX-native research codebase for distillation."""

__version__ = "0.1.0"
