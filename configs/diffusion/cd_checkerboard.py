from configs.diffusion import _base

__doc__ = _base.doc("cd", "checkerboard")


def get_config(arg=None):
    return _base.method_config("cd", "checkerboard", arg)
