"""The build tools: the job's artifacts (``build``), the model (``export_onnx``), the venv
archive (``pack``, with ``cpython``, ``slim`` and ``elf``) and their upload (``upload``).

Run as ``python -m fruits_build.<tool>``; ``./dev package`` and ``./dev upload`` do. Nothing
here ships to EMR or to the Lambdas: these run on the build machine (and ``pack`` in
``fruits_build/Dockerfile``), so this file imports nothing.
"""
