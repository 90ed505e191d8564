"""Passwords kept out of the YAML: every password key also has a file form and a systemd
credential form, so configuration management never templates a secret into governor.yml.

For a key such as `postgresql.superuser.password`, in this order:
- the key itself in the files (as before);
- `postgresql.superuser.password_file: PATH`: the file's first line;
- a systemd credential of that name (`LoadCredential=postgresql.superuser.password:/etc/...`
  in a drop-in): `$CREDENTIALS_DIRECTORY/postgresql.superuser.password`.
A secrets file must be a regular file that others cannot read or write (mode ..0 for others,
e.g. 0640 root:postgres or 0600 postgres); anything else is refused, naming the file and never
its content.
"""
from __future__ import annotations

import os
import stat
from typing import Any, Optional, Tuple

from governor.checker import secret_check
from governor.settings import SECRET_MAX

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


def read(checker: Any, key: str, required: bool = False) -> Optional[str]:
    """The secret for `key` from checker (checker.Checker), or None; problems are recorded there."""
    inline, path = checker.get(key), checker.get(f"{key}_file")
    if inline is not None and path is not None:
        checker.fail(f"{key}_file", f"give either {key} or {key}_file, not both")
        return None
    if inline is not None:
        return checker.value(key, "str", check=secret_check)
    if path is not None:
        if not isinstance(path, str) or not path:
            checker.fail(f"{key}_file", f"expected the path of a file holding the secret, got {path!r}")
            return None
        return _from_file(checker, f"{key}_file", path)
    credentials = os.environ.get(CREDENTIALS_ENV, "").split(":")[0]
    credential = os.path.join(credentials, key) if credentials else ""
    if credential and os.path.exists(credential):
        return _from_file(checker, key, credential, what="systemd credential")
    if required:
        checker.fail(key, f"required (a string; or {key}_file: PATH, or a systemd credential named {key})")
    return None


def _from_file(checker: Any, key: str, path: str, what: str = "file") -> Optional[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        checker.fail(key, f"cannot read the {what} {path}: {exc.strerror or exc}")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            checker.fail(key, f"{path} is not a regular file")
            return None
        if st.st_mode & 0o007:
            checker.fail(key, f"{path} can be read or written by any user (mode {stat.S_IMODE(st.st_mode):04o}): "
                              "make it 0640 root:postgres or 0600 postgres")
            return None
        raw = os.read(fd, SECRET_MAX + 3)
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        checker.fail(key, f"{path} is not UTF-8 text")
        return None
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    problem = secret_check(text) or (None if text else "is empty")
    if problem:
        checker.fail(key, f"{path}: {problem}")
        return None
    return text


def user_and_password(checker: Any, section: str) -> Tuple[Optional[str], Optional[str]]:
    """`SECTION.username` and its password, which come together or not at all."""
    user = checker.value(f"{section}.username", "str", check=secret_check)
    password = read(checker, f"{section}.password")
    if bool(user) != bool(password):
        checker.fail(f"{section}.username" if password else f"{section}.password",
                     f"{section}.username and {section}.password must be given together")
    return user, password
