"""latentvla: latent-reasoning Vision-Language-Action policies (LaRA-VLA and RD-VLA on one backbone)."""

__version__ = "0.1.0"
