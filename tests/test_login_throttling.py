"""Login throttling (issue 12): repeated wrong passwords for one account from one address
lock that pair out for a while, on the site's and the admin's login alike; the account
still signs in from elsewhere, and a success clears the count."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def attempt(client, password: str, address: str = "203.0.113.7", url: str = "/login/"):
    return client.post(url, {"username": "ann", "password": password}, REMOTE_ADDR=address)


def test_wrong_passwords_lock_the_account_at_that_address_only(client, people, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        assert attempt(client, "wrong").status_code == 200  # the form again, with its error
    locked = attempt(client, "wrong")
    assert locked.status_code == 429 and b"Too many failed logins" in locked.content
    # Even the right password is refused from there now, and nobody is signed in.
    assert attempt(client, "pw-ann-123").status_code == 429
    assert "_auth_user_id" not in client.session
    # The same account from another address is not locked out by someone else's guesses.
    assert attempt(client, "pw-ann-123", address="198.51.100.2").status_code == 302


def test_the_admin_login_is_throttled_too(client, people):
    for _ in range(5):
        attempt(client, "wrong", url="/admin/login/")
    assert attempt(client, "pw-ann-123", url="/admin/login/").status_code == 429


def test_a_success_clears_the_count(client, people):
    for _ in range(4):
        attempt(client, "wrong")
    assert attempt(client, "pw-ann-123").status_code == 302
    client.logout()
    for _ in range(4):
        assert attempt(client, "wrong").status_code == 200  # four more allowed: the count started over
