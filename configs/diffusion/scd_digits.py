from configs.diffusion import _base

__doc__ = _base.doc("scd", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("scd", "sklearn_digits", arg)
