"""edge_eco: an embeddable, offline-first runtime for a population of small models.

    import edge_eco
    with edge_eco.open("models/clinc150") as eco:
        answer = eco.answer("what's my balance")
"""

from .ecology import Answer, Ecology, open
from .errors import (BackendError, EdgeEcoError, FallbackError, IntegrityError, ManifestError,
                     RequestError, ResidencyError)

__version__ = "0.1.0"
__all__ = ["Answer", "BackendError", "Ecology", "EdgeEcoError", "FallbackError", "IntegrityError",
           "ManifestError", "RequestError", "ResidencyError", "open", "__version__"]
