"""Who may call an endpoint: every router declares one of the two audiences below as its
`auth`. Session cookies never authenticate an API call (so the API needs no CSRF
token); a key in `Authorization: Bearer <key>` does."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest
from ninja.errors import AuthorizationError
from ninja.security import HttpBearer

from api.services import user_for_key


class PersonToken(HttpBearer):
    """Any signed-up person's token: annotators and researchers."""

    # Shown in the docs' "Authorize" dialog; researchers paste their key in both boxes.
    openapi_description = "Any person's key from /account/tokens (the label endpoints)."

    def authenticate(self, request: HttpRequest, token: str) -> AbstractBaseUser | None:
        user = user_for_key(token)
        if user is not None:
            self.check_role(user)
        return user  # None: ninja answers 401

    def check_role(self, user: AbstractBaseUser) -> None:
        """Raise AuthorizationError (403) when the person may not call this endpoint."""


class StaffToken(PersonToken):
    """A researcher's token (Django staff, as on the web pages: prefloop/access.py)."""

    openapi_description = "A researcher's (staff) key from /account/tokens (every other endpoint)."

    def check_role(self, user: AbstractBaseUser) -> None:
        if not user.is_staff:
            raise AuthorizationError(message="this endpoint needs a researcher's (staff) token")


person_token = PersonToken()
staff_token = StaffToken()
