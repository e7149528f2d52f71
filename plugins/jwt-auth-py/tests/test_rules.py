"""The plugin's decisions with any Python (`python3 -m unittest discover -s tests`), before they
are built into a component. The behaviour through the node's sandbox is checked by
`stompbox plugin test` with ../jwt-auth/cases.toml, the cases the Rust jwt-auth answers too."""

import base64
import hashlib
import hmac
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import rules  # noqa: E402

SECRET = "s3cret"
NOW_MS = 1_700_000_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def token(claims: dict, secret: str = SECRET, alg: str = "HS256") -> str:
    signing = f"{b64(json.dumps({'alg': alg}).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing}.{b64(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())}"


class Rules(unittest.TestCase):
    def test_valid_tokens_name_their_subject(self):
        t = token({"sub": "alice", "exp": 1_700_000_060, "scope": "read", "auth": "admin", "n": 1})
        user, attributes = rules.authenticate([("userid", "alice"), ("token", f"Bearer {t}")], SECRET, NOW_MS)
        self.assertEqual(user, "alice")
        self.assertEqual(attributes, [("auth", "jwt"), ("scope", "read")])

    def test_refusals_say_why(self):
        def refusal(headers, secret=SECRET):
            with self.assertRaises(rules.Refused) as caught:
                rules.authenticate(headers, secret, NOW_MS)
            return str(caught.exception)

        t = token({"sub": "alice", "exp": 1_700_000_060})
        self.assertEqual(refusal([("token", t)], None), "jwt-auth: tenant setting jwt_secret is not set")
        self.assertEqual(refusal([("userid", "b\nob"), ("token", t)]), "jwt-auth: userid 'b?ob' does not match the token's subject")
        self.assertEqual(refusal([("token", t)], "other"), "jwt-auth: bad token signature")
        self.assertEqual(refusal([("token", token({"sub": "a", "exp": 1}))]), "jwt-auth: token expired at 1 (unix seconds)")
        self.assertIn("'none' is not accepted", refusal([("token", token({"sub": "a", "exp": 2e9}, alg="none"))]))
        self.assertIn("no token", refusal([("userid", "alice")]))

    def test_base64url_has_one_spelling(self):
        self.assertEqual(rules.b64url("YQ"), b"a")
        self.assertEqual(rules.b64url("YQ=="), b"a")
        self.assertIsNone(rules.b64url("YR"))
        self.assertIsNone(rules.b64url("Y+"))

    def test_users_keep_to_their_own_destinations(self):
        rules.authorize("alice", True, "/user/alice/queue/x", None)
        rules.authorize("a/b", True, "/user/a/b/queue/x", None)
        for user, destination, text in [
            ("ali", "/user/alice/queue/x", "only to its own"),
            ("", "/user/alice/queue/x", "anonymous"),
            ("bob", "/topic/x/", "path segment"),
            ("bob", "/queue/orders", "not allowed"),
        ]:
            with self.assertRaises(rules.Refused) as caught:
                rules.authorize(user, True, destination, None)
            self.assertIn(text, str(caught.exception))
        with self.assertRaises(rules.Refused) as caught:
            rules.authorize("bob", False, "/topic/news", " ")
        self.assertEqual(str(caught.exception), "jwt-auth: SEND is not allowed on this tenant")
        rules.authorize("bob", False, "/queue/in/1", " /queue/in/ , /topic/chat/ ,")

    def test_channel_codes(self):
        table = " ORDER_STATUS = /queue/orders , NEWS=/topic/news,,BROKEN, EMPTY="
        self.assertEqual(rules.resolve_channel(table, "ORDER_STATUS"), "/queue/orders")
        self.assertIsNone(rules.resolve_channel(table, "news"))
        self.assertIsNone(rules.resolve_channel(table, "EMPTY"))
        self.assertIsNone(rules.resolve_channel(None, "NEWS"))


if __name__ == "__main__":
    unittest.main()
