from configs.diffusion import _base

__doc__ = _base.doc("progressive", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("progressive", "sklearn_digits", arg)
