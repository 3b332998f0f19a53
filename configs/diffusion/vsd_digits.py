from configs.diffusion import _base

__doc__ = _base.doc("vsd", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("vsd", "sklearn_digits", arg)
