from configs.diffusion import _base

__doc__ = _base.doc("sct", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("sct", "sklearn_digits", arg)
