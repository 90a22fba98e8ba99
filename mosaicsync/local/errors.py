"""The local platform's one HTTP error type: a status and a message that says what to do."""

from __future__ import annotations


class ApiError(Exception):
    """Becomes `{"success": false, "error": message, ...extra}` with `status` and `headers`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {"success": False, "error": self.message, **self.extra}
