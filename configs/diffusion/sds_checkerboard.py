from configs.diffusion import _base

__doc__ = _base.doc("sds", "checkerboard")


def get_config(arg=None):
    return _base.method_config("sds", "checkerboard", arg)
