from configs.diffusion import _base

__doc__ = _base.doc("ct", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("ct", "sklearn_digits", arg)
