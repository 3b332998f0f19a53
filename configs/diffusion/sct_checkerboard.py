from configs.diffusion import _base

__doc__ = _base.doc("sct", "checkerboard")


def get_config(arg=None):
    return _base.method_config("sct", "checkerboard", arg)
