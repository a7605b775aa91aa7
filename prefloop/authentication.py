"""API token authentication: DRF's ``TokenAuthentication`` with the token and its user read in
one plain statement.

DRF's own lookup (``Token.objects.select_related("user").get(key=…)``) builds and compiles an
ORM query on every request; an annotator's client sends one authenticated request per
judgment, so the lookup is written out once here. Same answers as DRF's: the user and the
token, "Invalid token." for an unknown key, "User inactive or deleted." for an inactive user.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        User = get_user_model()
        sql = (
            f"SELECT u.*, t.created AS token_created FROM {User._meta.db_table} u "
            f"JOIN {Token._meta.db_table} t ON t.user_id = u.{User._meta.pk.column} WHERE t.key = %s"
        )
        user = next(iter(User.objects.raw(sql, [key])), None)
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token(key=key, user=user, created=user.token_created)
        token._state.adding, token._state.db = False, user._state.db
        return user, token
