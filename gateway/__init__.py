"""distill-gateway: an Open Inference Protocol gateway that moves traffic from a teacher model to
its distilled student."""

__version__ = "0.1.0"
