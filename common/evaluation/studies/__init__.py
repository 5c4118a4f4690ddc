"""Paper studies: one command trains a table's bundles over the paper's runs and collects the paper's table.

Modules: ``spec`` (study files, ``bundles/studies/*.yaml``), ``settings`` (data-only ``KEY=VALUE`` settings and
:func:`.settings.check_data_value`), ``runs`` (run folders, splits, commands, submitit executors),
``table`` (collection into ``table.csv``/``table.md`` and figures), ``workflow`` (the whole study, ``--status``).
"""
