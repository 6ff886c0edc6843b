"""Tools that read what the job wrote; not shipped to EMR (the job zip holds
``emr_serverless_job`` and ``fruits_contract`` only).

- ``current.py``: the current features, one row per photo in the current PCA space (Spark);
- ``inventory.py``: rows per run and per PCA version, ``python -m fruits_readers.inventory``
  (pyarrow, no Spark);
- ``plots.py``: a run's scree plot and PCA scatter as PNGs, ``python -m fruits_readers.plots``
  (pyarrow and matplotlib, no Spark).

They import the job's package for its readers' rules (``reduce``, ``compact``, ``erase``), so
both must be on the path: a checkout's venv has them; a Spark elsewhere takes both as
``--py-files``.
"""
