"""Parameter configs of chapters 2 onwards: one module per notebook, each registering its class with
:func:`vlnb.config.register` under the notebook stem. Importing this package registers them all."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
