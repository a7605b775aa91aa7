"""Brute-force limits on signing in (issue 11, item 2; prefloop/login_limits.py).

Ten wrong passwords for one username from one address within a minute, and the eleventh try
from there is refused (429) even with the right password -- on the login page and on the token
endpoint -- while the same user signing in from another address, and another user from the same
address, still get in. The token endpoint also takes a bounded number of requests per address.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token

from tests.factories import TEST_PASSWORD, make_user

pytestmark = pytest.mark.django_db

LOGIN, TOKEN = "/accounts/login/", "/api/auth/token/"
ATTACKER, HOME, OFFICE = "203.0.113.66", "198.51.100.7", "198.51.100.8"
LIMIT = settings.AXES_FAILURE_LIMIT


@pytest.fixture
def victim():
    return make_user("victim", password=TEST_PASSWORD)


def _page_login(client, username, password, ip):
    client.cookies.clear()
    response = client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip)
    return response, "_auth_user_id" in client.session


def _token(client, username, password, ip):
    return client.post(TOKEN, {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_the_limit_is_ten_failures():
    assert LIMIT == 10


def test_the_login_page_refuses_the_eleventh_try_and_lets_others_in(client, victim):
    make_user("colleague", password=TEST_PASSWORD)
    for attempt in range(LIMIT):
        response, signed_in = _page_login(client, "victim", f"guess-{attempt}", ATTACKER)
        assert not signed_in and response.status_code in (200, 429), attempt
    response, signed_in = _page_login(client, "victim", TEST_PASSWORD, ATTACKER)
    assert response.status_code == 429 and not signed_in
    assert "Too many failed sign-ins" in response.content.decode()
    # the right password from another address still works, and so does another user from here
    response, signed_in = _page_login(client, "victim", TEST_PASSWORD, HOME)
    assert response.status_code == 302 and signed_in
    response, signed_in = _page_login(client, "colleague", TEST_PASSWORD, ATTACKER)
    assert response.status_code == 302 and signed_in


def test_the_token_endpoint_refuses_the_eleventh_try_and_lets_others_in(client, victim):
    for attempt in range(LIMIT):
        response = _token(client, "victim", f"guess-{attempt}", ATTACKER)
        assert response.status_code in (400, 429) and "token" not in response.json(), attempt
    refused = _token(client, "victim", TEST_PASSWORD, ATTACKER)
    assert refused.status_code == 429 and "token" not in refused.json()
    ok = _token(client, "victim", TEST_PASSWORD, OFFICE)
    assert ok.status_code == 200 and ok.json()["token"] == Token.objects.get(user=victim).key


def test_failures_on_the_page_and_the_api_add_up(client, victim):
    for attempt in range(LIMIT // 2):
        _page_login(client, "victim", f"page-guess-{attempt}", ATTACKER)
        _token(client, "victim", f"api-guess-{attempt}", ATTACKER)
    assert _token(client, "victim", TEST_PASSWORD, ATTACKER).status_code == 429
    assert _page_login(client, "victim", TEST_PASSWORD, ATTACKER)[0].status_code == 429


def test_a_successful_sign_in_clears_the_count(client, victim):
    for _ in range(2):
        for attempt in range(LIMIT - 1):
            assert not _page_login(client, "victim", f"typo-{attempt}", HOME)[1]
        response, signed_in = _page_login(client, "victim", TEST_PASSWORD, HOME)
        assert response.status_code == 302 and signed_in


def test_the_token_endpoint_takes_a_bounded_number_of_requests_per_address(client):
    """Guessing many usernames from one address: over PREFLOOP_LOGIN_RATE, 429 with Retry-After."""
    allowed = int(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["login"].split("/")[0])
    for i in range(allowed):
        assert _token(client, f"user-{i}", "x", ATTACKER).status_code == 400, i
    over = _token(client, "user-last", "x", ATTACKER)
    assert over.status_code == 429 and int(over["Retry-After"]) > 0
    assert _token(client, "user-last", "x", HOME).status_code == 400  # another address is not slowed


def test_behind_a_proxy_the_forwarded_address_counts(client, victim, settings):
    """With PREFLOOP_PROXY_COUNT=1, clients behind the proxy are told apart by X-Forwarded-For."""
    settings.PREFLOOP_PROXY_COUNT = 1
    for attempt in range(LIMIT):
        client.post(TOKEN, {"username": "victim", "password": f"g{attempt}"}, REMOTE_ADDR="10.0.0.1",
                    HTTP_X_FORWARDED_FOR=ATTACKER)
    refused = client.post(TOKEN, {"username": "victim", "password": TEST_PASSWORD}, REMOTE_ADDR="10.0.0.1",
                          HTTP_X_FORWARDED_FOR=ATTACKER)
    assert refused.status_code == 429
    ok = client.post(TOKEN, {"username": "victim", "password": TEST_PASSWORD}, REMOTE_ADDR="10.0.0.1",
                     HTTP_X_FORWARDED_FOR=HOME)
    assert ok.status_code == 200


@pytest.mark.parametrize("password", ["password123", "1234567890123", "qwertyuiop"])
def test_common_and_all_digit_passwords_are_refused_when_set(password):
    """Django's full set of password validators (the security checklist), for passwords set
    through the admin, ``changepassword`` or ``createsuperuser``."""
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        validate_password(password)
    validate_password("a long and unusual pass phrase 7")
