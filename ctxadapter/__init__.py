"""ctxadapter: causally disentangled concepts on top of pretrained Hugging Face autoencoders."""

__version__ = "0.1.0"

from .adapter import CtxAdapter  # noqa: E402
from .codec import LatentCodec  # noqa: E402
from .config import AdapterConfig  # noqa: E402
from .contexts import OBSERVATIONAL, context_name, parse_context  # noqa: E402
from .model import ContextAutoencoder  # noqa: E402
from .objective import Objective  # noqa: E402

__all__ = [
    "OBSERVATIONAL",
    "AdapterConfig",
    "ContextAutoencoder",
    "CtxAdapter",
    "LatentCodec",
    "Objective",
    "context_name",
    "parse_context",
]
