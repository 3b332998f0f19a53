from configs.diffusion import _base

__doc__ = _base.doc("sds", "sklearn_digits")


def get_config(arg=None):
    return _base.method_config("sds", "sklearn_digits", arg)
