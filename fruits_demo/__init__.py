"""The offline demo: the job on a generated image set, then its plots (``./dev run``).

Not shipped to EMR (the job zip holds ``emr_serverless_job`` and ``fruits_contract`` only).

- ``run.py``: the demo itself, ``python -m fruits_demo``;
- ``image_sets.py``: deterministic labelled image sets (and awkward uploads) written to a
  folder, which the demo, the tests and the benchmarks featurize.
"""
