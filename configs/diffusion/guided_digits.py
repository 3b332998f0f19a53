from configs.diffusion import _base

__doc__ = _base.doc("guided", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("guided", "sklearn_digits", arg)
