from configs.diffusion import _base

__doc__ = _base.doc("rcm", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("rcm", "sklearn_digits", arg)
