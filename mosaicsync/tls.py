"""The verifying TLS context of every https:// connection, its CA certificates loaded late.

Its own module: `ssl` costs a command ~8 ms to import, and a client that only speaks plain HTTP
(the local platform) never needs it.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
from typing import Any


class DeferredCAContext(ssl.SSLContext):
    """The verifying TLS context of `ssl.create_default_context` (hostname checked, certificate
    required; CA certificates from SSL_CERT_FILE, else SSL_CERT_DIR, else certifi), except that
    the CA certificates load at the first TLS handshake instead of when the client is built.

    Loading them costs tens of milliseconds, paid by every command before; a client that only
    speaks plain HTTP (the local platform) never needs them. Every TLS connection goes through
    `wrap_socket` or `wrap_bio`, so none is made before they are loaded.
    """

    _loaded = False

    def __new__(cls) -> DeferredCAContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        self._load_lock = threading.Lock()
        self.verify_mode = ssl.CERT_REQUIRED
        self.check_hostname = True
        if sys.version_info >= (3, 13):  # what ssl.create_default_context adds there
            self.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog and not sys.flags.ignore_environment:
            self.keylog_filename = keylog

    @property
    def ca_loaded(self) -> bool:
        return self._loaded

    def load_ca(self) -> None:
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            if os.environ.get("SSL_CERT_FILE"):
                self.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                self.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi

                self.load_verify_locations(cafile=certifi.where())
            self._loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.load_ca()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.load_ca()
        return super().wrap_bio(*args, **kwargs)
