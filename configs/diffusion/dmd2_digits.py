from configs.diffusion import _base

__doc__ = _base.doc("dmd2", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("dmd2", "sklearn_digits", arg)
