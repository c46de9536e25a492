"""`diffspec review`: a local page where a person accepts or rejects images, recorded in the catalog."""

from diffspec.review.server import ReviewServer

__all__ = ["ReviewServer"]
