"""GET /v1/segments/{name}: a segment's definition and member count, with the same API keys as /v1/events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from cascade.audiences.definition import NAME_PATTERN, SegmentDefinitionError
from cascade.audiences.service import CountMethod, count_customers, count_segment, load_segments
from cascade.infra.logging import get_logger
from webhooks.api_events import API_KEY_SECURITY, tenant_of

router = APIRouter(tags=["segments"])
log = get_logger("webhooks.segments")


class SegmentInfo(BaseModel):
    """A segment now: who it is (description, source) and how many customers are in it."""

    name: str
    description: str
    source: str
    members: int
    customers: int
    exact: bool = Field(
        description="True: counted by the segment's query now. False: the open memberships, exact as of"
        " `as_of` (the last refresh of everyone), since then current for the customers whose events"
        " came through /v1/events; time alone, profile edits, merges and erasures show at the next refresh"
    )
    as_of: datetime = Field(description="The moment the count describes (UTC)")
    method: CountMethod = Field(
        description="How the count was taken: the segment's query; the open memberships (as of the last"
        " refresh); or those memberships corrected for the customers touched since"
    )
    touched: int | None = Field(
        default=None, description="With method `corrected`: how many customers were judged again"
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key"},
    404: {"description": "Unknown segment"},
    500: {"description": "The segment definitions on the server are invalid (the message names file and line)"},
}


@router.get("/v1/segments/{name}", response_model=SegmentInfo, responses=_ERRORS, openapi_extra=API_KEY_SECURITY)
async def get_segment(
    name: Annotated[str, Path(pattern=NAME_PATTERN, description="Segment name, e.g. loyal")],
    request: Request,
    tenant: Annotated[str, Depends(tenant_of)],
    exact: Annotated[
        bool,
        Query(
            description="Count the members now (exact): the last refresh's memberships corrected for the"
            " customers changed since, or the segment's query when that cannot be done"
        ),
    ] = False,
) -> SegmentInfo:
    """The segment's description and its member count: from the memberships the last refresh
    recorded (an index range; `as_of` says when), else or with `exact=true` exact now (`as_of`
    now): those memberships corrected for the customers changed since, or its query."""
    state = request.app.state
    try:
        catalog = load_segments(state.settings)
    except SegmentDefinitionError as exc:
        log.error("segments.invalid", error=str(exc))
        raise HTTPException(500, f"segment definitions are invalid: {exc}") from None
    if name not in catalog.segments:
        raise HTTPException(404, f"unknown segment {name!r}")
    loaded = catalog.segments[name]
    source = "built-in" if loaded.source == "built-in" else f"segments/{name}.yaml"
    counted = await count_segment(state.db, catalog, name, exact=exact, settings=state.settings)
    return SegmentInfo(
        name=name,
        description=loaded.spec.description,
        source=source,
        members=counted.members,
        customers=await count_customers(state.db),
        exact=counted.exact,
        as_of=counted.as_of,
        method=counted.method,
        touched=counted.touched,
    )
