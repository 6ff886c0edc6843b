"""EMR Serverless, emulated on one machine: run a StartJobRun request as the service would.

    python -m emr_emulator --request request.json [--endpoint-url http://127.0.0.1:5000]
    python -m emr_emulator --application-id APP --job-run-id RUN [--endpoint-url ...]

For tests and for trying a deployment's exact request before paying for it; see run.py for
what is emulated and what is not.
"""
