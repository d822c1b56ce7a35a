"""LLM inference measured as energy-to-token production.

The names a user needs first are importable from here (`from energytok import Meter, energy_card`); each is
loaded from its chapter's module only when first used, so `import energytok` stays as cheap as `python -c pass`.
"""

__version__ = "0.1.0"

_API = {  # name -> the module (chapter) that defines it
    'Meter': 'meter', 'available_sensors': 'sensors', 'describe_sensors': 'sensors',
    'RunConfig': 'harness', 'Sweep': 'workload', 'run_sweep': 'workload',
    'load_runs': 'store', 'token_metrics': 'metrics',
    'compare_runs': 'report', 'energy_card': 'card', 'compare_two': 'stats_compare', 'pairwise': 'stats_compare',
    'anova': 'stats_anova', 'power_analysis': 'stats_power', 'equivalence': 'stats_power',
    'from_measurement': 'production', 'evaluate': 'production', 'hardware': 'production', 'HardwareSpec': 'production',
    'FacilitySpec': 'production',
}
__all__ = ['__version__', *_API]


def __getattr__(name):
    "Load a top-level name from its module on first use (PEP 562)."
    if name not in _API: raise AttributeError(f"module 'energytok' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f'energytok.{_API[name]}'), name)
    globals()[name] = value
    return value


def __dir__(): return sorted(set(globals()) | set(_API))


def load_ipython_extension(ipython):
    "`%load_ext energytok`: register the `%%joules` cell magic (imported only now, so `import energytok` stays cheap)."
    from energytok.magic import load_ipython_extension as _load
    _load(ipython)
