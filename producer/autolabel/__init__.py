"""autolabel: queue-driven batch video labeling with heavy detectors (producer side, torch-free)."""

__version__ = "0.1.0"
