"""API tokens: made (the key is returned once), revoked, and looked up per request."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone

from api.models import ApiToken, hash_key

KEY_PREFIX = "plk_"
# The visible part: the marker and 8 random characters, enough to tell tokens apart.
VISIBLE_CHARS = len(KEY_PREFIX) + 8
# last_used_at is a hint for people, not an audit log: written at most this often, so a
# script polling a job does not turn every read into a database write.
LAST_USED_PRECISION = timedelta(minutes=1)
MAX_NAME_CHARS = 100


class TokenError(ValueError):
    """A token cannot be made like that; the message says why."""


def create_token(user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """A new token of `user` and its key, which is not stored and cannot be shown again."""
    name = name.strip()
    if not name:
        raise TokenError("a token needs a name")
    if len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise TokenError(f"a token's name is at most {MAX_NAME_CHARS} characters, without NUL")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=key[:VISIBLE_CHARS], key_hash=hash_key(key))
    return token, key


def revoke_token(user: AbstractBaseUser, token_id: int) -> ApiToken | None:
    """Revoke one of `user`'s own tokens; None when they have no such token."""
    token = ApiToken.objects.filter(user=user, pk=token_id).first()
    if token is not None:
        token.revoke()
    return token


def user_for_key(key: str) -> AbstractBaseUser | None:
    """The active person a key belongs to, or None for an unknown, revoked or disabled
    one. Records when the token was last used."""
    if not key.startswith(KEY_PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_key(key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_PRECISION:
        ApiToken.objects.filter(pk=token.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_PRECISION)
        ).update(last_used_at=now)
    return token.user
