from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class PrefLoopAdminConfig(AdminConfig):
    default_site = "prefloop.admin.PrefLoopAdminSite"
