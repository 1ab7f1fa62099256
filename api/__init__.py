"""The FastAPI gateway: tasks, approvals, synchronous model calls, traces, events and metrics over HTTP.

``create_app(engine, settings)`` builds the app; ``create_api_key`` makes a key for ``aiplane dev`` and tests.
"""

from api.app import create_app
from api.auth import create_api_key
from api.problems import Problem, ProblemError
from api.settings import GatewaySettings
from api.store import ApiKeyStore, Principal

__all__ = [
    "ApiKeyStore",
    "GatewaySettings",
    "Principal",
    "Problem",
    "ProblemError",
    "create_api_key",
    "create_app",
]
