"""The operator's commands, one module each, run by hand against a deployed stack.

    python -m fruits_ops.backfill    one job run over every photo under a prefix
    python -m fruits_ops.reconcile   the photos under raw/ without a row; --submit runs them
    python -m fruits_ops.compact     merge old batch partitions into few files
    python -m fruits_ops.erase       erase photos' rows by hand (GDPR)
    python -m fruits_ops.preflight   prove a deployment before its first backfill
    python -m fruits_ops.capacity    the modelled cost and latency per 1,000 photos

They live apart from ``lambda_trigger/`` so that the Lambda bundle ships only what the two
functions run; they import its request builder, manifests and settings, never the other way.
Every deployment setting they (and fruits_build/upload.py) read goes through one resolver with
one precedence, stated once: ``fruits_ops.resolver``.
"""
