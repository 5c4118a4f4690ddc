"""Paper studies: one command trains a table's bundles over the paper's runs and collects the paper's table.

Modules: ``spec`` (study files, ``bundles/studies/*.yaml``), ``runs`` (run folders, splits, commands, submitit
executors, the settings a ``--set`` may not replace; ``--set`` values are checked by :mod:`common.data.settings`),
``table`` (collection into ``table.csv``/``table.md`` and figures), ``workflow`` (the whole study, ``--status``).
"""
