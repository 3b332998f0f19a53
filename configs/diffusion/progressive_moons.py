from configs.diffusion import _base

__doc__ = _base.doc("progressive", "moons")


def get_config(arg=None):
    return _base.method_config("progressive", "moons", arg)
