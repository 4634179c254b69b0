"""The service's errors: each carries its HTTP status; all are answered as ``{"error": message}``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prodvec.errors import ProdvecError


class ApiError(ProdvecError):
    """An error with an HTTP status; its message says what to do."""

    status = 400
    headers: dict[str, str] = {}  # noqa: RUF012  # overridden per instance where needed
    #: Raised on a replica, this may only mean it has not replayed a recent write yet: the
    #: primary is asked again (prodvec/service/reads.py).
    primary_may_differ = False


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404
    primary_may_differ = True


class Conflict(ApiError):
    status = 409
    primary_may_differ = True


class UnknownCategory(ApiError):
    """A category filter naming a category no product has: most often a typo."""

    status = 422
    primary_may_differ = True


class InvalidRequest(ApiError):
    """Parameters that cannot be searched with, found outside the request models."""

    status = 422


class TooLarge(ApiError):
    status = 413


class UnsupportedMedia(ApiError):
    """Not a photo this server reads (whatever the file name says), or a body type it does not take."""

    status = 415


class CorruptImage(ApiError):
    """A photo in a format this server reads, but cut off or damaged: the file, not its kind, is the problem."""

    status = 422


class FetchFailed(ApiError):
    """image_url could not be fetched: the other server's problem, or the way to it."""

    status = 502


class Overloaded(ApiError):
    status = 503

    def __init__(self, message: str, *, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_seconds)}


class ModelUnavailable(ApiError):
    """The catalog's active model cannot be loaded on this server: the operator's to fix."""

    status = 503


class TimedOut(ApiError):
    status = 504


_ONE_OBJECT = "send one JSON object (Content-Type: application/json) with the fields /docs shows for this endpoint"
#: Pydantic's error types for a body that is JSON, but not an object (an array, a string, a number).
_NOT_AN_OBJECT = ("model_type", "model_attributes_type", "dict_type")


def validation_problem(errors: Sequence[Mapping[str, Any]], body: Any = None,
                       media_type: str = "application/json") -> ApiError:
    """A request that failed validation, as one error in prodvec's words: 400 for a body that is
    empty or not JSON at all (it cannot be read), 415 for one sent as another type than JSON, else
    422 naming each field's problem. ``body``: the text that was parsed, where the framework keeps
    it (for the line and column); ``media_type``: the request's Content-Type, without parameters."""
    for error in errors:
        if error.get("type") == "json_invalid":
            return BadRequest(f"the request body is not valid JSON ({_json_problem(error, body)}): {_ONE_OBJECT}")
        if error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",):  # FastAPI: no body at all
            return BadRequest(f"the request body is empty: {_ONE_OBJECT}")
        if error.get("type") in _NOT_AN_OBJECT and not _field(error):
            if not _is_json(media_type):  # the framework left it unparsed: its bytes are no object
                sent = f"sent as {media_type}" if media_type else "sent without a Content-Type"
                return UnsupportedMedia(f"the request body is {sent}, not as JSON: {_ONE_OBJECT}")
            return InvalidRequest(f"invalid request: the body is JSON but not an object: {_ONE_OBJECT}")
    return InvalidRequest(validation_message(errors))


def _is_json(media_type: str) -> bool:
    """Whether FastAPI parses a body of this type as JSON (application/json, application/*+json)."""
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _json_problem(error: Mapping[str, Any], body: Any) -> str:
    """The parser's reason and where: pydantic's says its line and column; FastAPI's own parse
    (a route's body model) gives the offset in ``body``, from which they are counted here."""
    reason = str((error.get("ctx") or {}).get("error") or "cannot be parsed")
    offset = error.get("loc", ())[-1:]
    if not offset or not isinstance(offset[0], int) or not isinstance(body, str):
        return reason
    line = body.count("\n", 0, offset[0]) + 1
    column = offset[0] - body.rfind("\n", 0, offset[0])
    return f"{reason} at line {line} column {column}"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's validation errors as one line in prodvec's words: each names its field and what
    it should be, with no "Value error, " or "Input should be" from the framework."""
    return "invalid request: " + "; ".join(_problem(error) for error in errors)


def _field(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))


def _problem(error: Mapping[str, Any]) -> str:
    field = _field(error)
    kind, message = error.get("type"), str(error.get("msg", ""))
    cause = (error.get("ctx") or {}).get("error")
    if kind == "value_error" and cause is not None:  # our own validators' messages, as written
        return f"{field}: {cause}" if field else str(cause)
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":  # the models list their fields first (schemas.Filters): a backstop
        return f"unknown field {field!r}"
    given = error.get("input")
    got = f" (got {given!r})" if isinstance(given, (str, int, float)) and len(repr(given)) <= 40 else ""
    if message.startswith("Input should") and field:
        return f"{field} should{message.removeprefix('Input should')}{got}"
    return f"{field}: {message}{got}" if field else message
