from configs.diffusion import _base

__doc__ = _base.doc("sds", "ring")


def get_config(arg=None):
    return _base.method_config("sds", "ring", arg)
