from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied


class PrefLoopAdminSite(admin.AdminSite):
    """Django's admin, but a signed-in annotator gets 403 instead of being bounced to the
    admin login page: they are who they say they are, they are just not allowed here."""

    site_header = "PrefLoop admin"

    def admin_view(self, view, cacheable=False):
        inner = super().admin_view(view, cacheable)

        def staff_only(request, *args, **kwargs):
            if request.user.is_authenticated and not request.user.is_staff:
                raise PermissionDenied
            return inner(request, *args, **kwargs)

        return staff_only

    def login(self, request, extra_context=None):
        if request.user.is_authenticated and not request.user.is_staff:
            raise PermissionDenied
        return super().login(request, extra_context)
