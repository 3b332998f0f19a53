from configs.diffusion import _base

__doc__ = _base.doc("sds", "moons")


def get_config(arg=None):
    return _base.method_config("sds", "moons", arg)
