"""An OpenAI- and vLLM-compatible HTTP gateway in front of the Triton ensembles (``python -m gateway``).

It never imports torch: it parses requests, fetches media, and forwards rows to Triton over gRPC.
"""
