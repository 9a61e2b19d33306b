"""Checking a user's password with PAM (libpam through ctypes): ``pam_authenticate`` then ``pam_acct_mgmt``.

The password is handed to PAM's conversation function as the answer to
every prompt that hides its echo, in memory PAM frees; it is never logged,
never stored, and the Python string goes with the request. A check
blocks (PAM modules may ask a directory, or sleep after a failure), so
the broker runs it on a worker thread of the loop's executor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_int, c_void_p, cast, sizeof

PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_SUCCESS = 0
PAM_CONV_ERR = 19
PAM_SILENT = 0x8000


class _Message(Structure):
    _fields_ = [("msg_style", c_int), ("msg", c_char_p)]


class _Response(Structure):
    _fields_ = [("resp", c_void_p), ("resp_retcode", c_int)]


_CONV_FUNC = CFUNCTYPE(c_int, c_int, POINTER(POINTER(_Message)), POINTER(POINTER(_Response)), c_void_p)


class _Conv(Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", c_void_p)]


class PamUnavailable(Exception):
    """libpam cannot be loaded on this system."""


_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None


def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    global _lib, _libc
    if _lib is None or _libc is None:
        name = ctypes.util.find_library("pam") or "libpam.so.0"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise PamUnavailable(f"cannot load libpam ({name}): {exc}") from None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.pam_start.argtypes = [c_char_p, c_char_p, POINTER(_Conv), POINTER(c_void_p)]
        lib.pam_start.restype = c_int
        lib.pam_authenticate.argtypes = [c_void_p, c_int]
        lib.pam_acct_mgmt.argtypes = [c_void_p, c_int]
        lib.pam_end.argtypes = [c_void_p, c_int]
        lib.pam_strerror.argtypes = [c_void_p, c_int]
        lib.pam_strerror.restype = c_char_p
        libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        libc.calloc.restype = c_void_p
        libc.strdup.argtypes = [c_char_p]
        libc.strdup.restype = c_void_p
        _lib, _libc = lib, libc
    return _lib, _libc


def authenticate(service: str, user: str, password: str) -> tuple[bool, str]:
    """Whether PAM ``service`` accepts ``user`` with ``password`` (and his account is usable); and PAM's word why not.

    The reason is PAM's own message (``Authentication failure``...), never
    anything the user sent.
    """
    lib, libc = _libs()
    secret = password.encode("utf-8")

    @_CONV_FUNC
    def conversation(n, messages, responses, _data):  # PAM frees what it is given: allocate with libc
        block = libc.calloc(n, sizeof(_Response))
        if not block:
            return PAM_CONV_ERR
        answers = cast(block, POINTER(_Response))
        for i in range(n):
            if messages[i].contents.msg_style == PAM_PROMPT_ECHO_OFF:
                answers[i].resp = libc.strdup(secret)
            answers[i].resp_retcode = 0
        responses[0] = answers
        return PAM_SUCCESS

    handle = c_void_p()
    conv = _Conv(conversation, None)
    rc = lib.pam_start(service.encode(), user.encode("utf-8"), byref(conv), byref(handle))
    if rc != PAM_SUCCESS:
        return False, f"pam_start failed ({rc})"
    try:
        rc = lib.pam_authenticate(handle, PAM_SILENT)
        if rc == PAM_SUCCESS:
            rc = lib.pam_acct_mgmt(handle, PAM_SILENT)
        reason = "" if rc == PAM_SUCCESS else (lib.pam_strerror(handle, rc) or b"").decode(errors="replace")
        return rc == PAM_SUCCESS, reason
    finally:
        lib.pam_end(handle, rc)


__all__ = ["PamUnavailable", "authenticate"]
