from configs.diffusion import _base

__doc__ = _base.doc("vsd", "moons")


def get_config(arg=None):
    return _base.method_config("vsd", "moons", arg)
