"""GIA-MIC: multimodal emotion recognition with gated interactive attention and
modality-invariant learning constraints (He, Mi, Toda).

Public API::

    from giamic import GIAMIC, GIAMICConfig
"""
__version__ = "0.1.0"

from giamic.models.config import GIAMICConfig  # noqa: E402
from giamic.models.modeling import GIAMIC, GIAMICOutput  # noqa: E402

__all__ = ["GIAMIC", "GIAMICConfig", "GIAMICOutput", "__version__"]
