from configs.diffusion import _base

__doc__ = _base.doc("progressive", "checkerboard")


def get_config(arg=None):
    return _base.method_config("progressive", "checkerboard", arg)
