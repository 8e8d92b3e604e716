"""Co-DETR (Co-DINO, 5 scales) for inference, registered in mmdet's MODELS registry.

A config imports this package through ``custom_imports`` and uses the official type names
(``CoDETR``, ``CoDINOHead``, ``CoDinoTransformer``, ``DinoTransformerDecoder``,
``DetrTransformerEncoder``, ``DetrTransformerDecoderLayer``). The module tree reproduces the
parameter names of the official mmdet 3.x checkpoints; docs/co-detr.md says what is built
and what is deliberately left out.
"""

from autolabel_worker.codetr.detector import CoDETR
from autolabel_worker.codetr.head import CoDINOHead
from autolabel_worker.codetr.transformer import (CoDinoTransformer, DetrTransformerDecoderLayer,
                                                 DetrTransformerEncoder, DinoTransformerDecoder)

__all__ = ["CoDETR", "CoDINOHead", "CoDinoTransformer", "DetrTransformerDecoderLayer", "DetrTransformerEncoder",
           "DinoTransformerDecoder"]
