"""LLM inference measured as energy-to-token production."""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    "`%load_ext energytok`: register the `%%joules` cell magic (imported only now, so `import energytok` stays cheap)."
    from energytok.magic import load_ipython_extension as _load
    _load(ipython)
