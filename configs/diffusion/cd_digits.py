from configs.diffusion import _base

__doc__ = _base.doc("cd", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("cd", "sklearn_digits", arg)
