"""Role checks shared by both apps' views. Researchers are Django staff users; everyone
else who can sign in is an annotator."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied


def staff_required(view):
    """Signed-out users go to the login page; signed-in non-staff users get 403."""

    @wraps(view)
    def check(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(check)
