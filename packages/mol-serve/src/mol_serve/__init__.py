"""mol-serve: the gRPC retrieval server for mol indexes, and its Python client.

Status: an installable skeleton. The grpc.aio server, the client and the CLI arrive with the mol-serve
issue (#6).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
