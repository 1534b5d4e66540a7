"""Bearer tokens of the service: read from a private file, compared in constant time."""

from __future__ import annotations

import hmac
import stat
from pathlib import Path

from expunge.exceptions import InvalidParameterError

#: shortest token accepted (about 96 bits of entropy as hex or base64)
MIN_TOKEN_LENGTH = 16


def read_tokens(path: str | Path) -> list[bytes]:
    """The tokens in ``path``: one per line; blank lines and ``#`` comments are skipped.

    The file must not be accessible to others (mode 600, or 640 for a service group), and
    every token
    must have at least :data:`MIN_TOKEN_LENGTH` characters. Generate one with
    ``python -c "import secrets; print(secrets.token_urlsafe(32))"``.
    """
    file = Path(path)
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
        text = file.read_text()
    except OSError as err:
        raise InvalidParameterError(
            f"Cannot read --token-file {str(file)!r}: {err.strerror}.") from err
    if mode & 0o007:
        raise InvalidParameterError(
            f"--token-file {str(file)!r} is accessible to others (mode {mode:04o}); make it "
            f"private: chmod 600 {str(file)!r}.")
    tokens = [line.strip() for line in text.splitlines()
              if line.strip() and not line.strip().startswith("#")]
    if not tokens:
        raise InvalidParameterError(
            f"--token-file {str(file)!r} holds no token. Put one per line, e.g. the output of "
            "python -c \"import secrets; print(secrets.token_urlsafe(32))\".")
    short = [i + 1 for i, t in enumerate(tokens) if len(t) < MIN_TOKEN_LENGTH]
    if short:
        raise InvalidParameterError(
            f"Tokens must have at least {MIN_TOKEN_LENGTH} characters; token(s) {short} of "
            f"{str(file)!r} are shorter.")
    return [t.encode() for t in tokens]


def token_matches(given: str | None, tokens: list[bytes]) -> bool:
    """Whether ``given`` is one of ``tokens``. Every token is compared, each with
    :func:`hmac.compare_digest`, so the time taken does not reveal which one (or how many
    leading characters) matched."""
    if not given:
        return False
    candidate = given.encode("utf-8", "replace")
    found = False
    for token in tokens:
        found |= hmac.compare_digest(candidate, token)
    return found
