"""memristor-hil: protocols, the run engine, models and their deployment on crossbar arrays.

``hil.run_protocol("protocols/quickstart.yaml", backend="mock")`` runs a protocol from Python as
``python -m hil.run`` does. Nothing heavy is imported here: every ``hil`` module imports this package.
"""


def __getattr__(name: str):
    if name in ("run_protocol", "BadInput"):
        from . import run
        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BadInput", "run_protocol"]
