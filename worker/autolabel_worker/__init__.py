"""autolabel's worker: batched MMDetection inference behind Celery."""

import warnings

from autolabel_worker.checkpoint import allow_mmengine_globals

# mmdet 3.3 calls torch.cuda.amp.autocast, deprecated in torch 2.4+: one warning per forward
# pass in every worker log, about code we do not own.
warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast", category=FutureWarning)

# Every torch.load in a worker process, mmengine's own included, must accept mmengine checkpoints.
allow_mmengine_globals()
