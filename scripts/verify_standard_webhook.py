"""Checks one webhook with the Standard Webhooks reference library (PyPI `standardwebhooks`), the
way a subscriber's receiver would: tests/signing_interop.rs proves with it that receivers accept
what src/webhooks_out/signing.rs signs, rather than trusting our own verifier.

Reads JSON on stdin: {"secret": "whsec_...", "headers": {"webhook-id": ..., ...}, "body": "..."}.
The body is a string and is verified as its UTF-8 bytes, as a receiver sees them on the wire.
Exits 0 when the library accepts the webhook, 1 (with the library's error on stderr) when it
refuses it, 2 when the input itself is unusable, 3 when the library is not installed (so that a
missing library is never mistaken for a refusal).

Run with .tools/venv/bin/python (scripts/install-tools.sh standardwebhooks installs the library).
"""

import json
import sys

try:
    from standardwebhooks import Webhook
except ImportError as e:
    print(f"{e}: run scripts/install-tools.sh standardwebhooks", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    try:
        request = json.load(sys.stdin)
        secret, headers, body = request["secret"], request["headers"], request["body"]
    except (ValueError, KeyError, TypeError) as e:
        print(f"unusable input: {e!r}", file=sys.stderr)
        return 2
    try:
        # json_parse=False: only the signature is judged; whether the body is JSON is not ours to
        # prove here. Everything else (headers, timestamp tolerance) is the library's default.
        Webhook(secret).verify(body, headers, json_parse=False)
    except Exception as e:  # noqa: BLE001 - any refusal is the answer we report
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
