"""autolabel's worker: batched MMDetection inference behind Celery."""

from autolabel_worker.checkpoint import allow_mmengine_globals

# Every torch.load in a worker process, mmengine's own included, must accept mmengine checkpoints.
allow_mmengine_globals()
