from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone


def hash_key(key: str) -> str:
    """What is stored of a key: its SHA-256. Keys are 256 random bits, so a plain hash
    (no salt, no slow KDF) is enough, and it lets a request find its token by index."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiToken(models.Model):
    """A person's key to the REST API. The key itself is shown once, when it is made;
    only its hash and a short prefix (to tell tokens apart on the page) are kept."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What it is for, e.g. 'training pipeline on gpu-3'.")
    prefix = models.CharField(max_length=16, help_text="The key's first characters, shown to tell tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…, {self.user})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
