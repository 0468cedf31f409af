from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USERS = [
    # (username, password, is_staff)
    ("researcher", "researcher-demo", True),
    ("annotator", "annotator-demo", False),
]


class Command(BaseCommand):
    help = "Create the demo logins (a researcher and an annotator) if they do not exist."

    def handle(self, *args, **options):
        User = get_user_model()
        for username, password, is_staff in DEMO_USERS:
            user, created = User.objects.get_or_create(username=username, defaults={"is_staff": is_staff})
            if created:
                user.set_password(password)
                user.is_superuser = is_staff
                user.save()
            self.stdout.write(f"{'created' if created else 'exists '} {username} / {password}")
