"""Who may do what (docs/security.md, "Access"): API keys kept as hashes (`keys`), the caller a
request speaks for and its role (`identity`), per-key rate limits and caps (`limits`), and the
middleware that puts a checked caller on every request (`gate`).

With no API keys configured, a request without an identity is an anonymous admin (local mode,
as it always was) and one that Cloud Run's IAM let in speaks for its verified email.
"""

from handler.access.identity import Caller
from handler.access.keys import ApiKey, KeyRing, Role

__all__ = ["ApiKey", "Caller", "KeyRing", "Role"]
