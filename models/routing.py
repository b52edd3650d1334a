"""Payloads of the routing activities (optichannel channel choice, adaptive wait)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import AwareDatetime, BaseModel, Field

from models.journey import AdaptiveWait, ChannelName, QuietHours, Reaction
from models.tables import Topic


class ChooseChannelInput(BaseModel):
    """Rank a step's channel pool for one customer; `idempotency_key` names the step's delivery."""

    customer_id: str = Field(min_length=1, max_length=128)
    journey: str
    workflow_id: str
    run_id: str
    step: int = Field(ge=0)
    idempotency_key: str = Field(description="the key the step's delivery row will carry")
    topic: Topic = Topic.MARKETING
    channels: list[ChannelName] = Field(min_length=1, description="the pool still unused, in journey order")
    await_reaction: dict[str, Reaction] = Field(default_factory=dict, description="per channel; default opened")
    at: AwareDatetime
    max_cost_per_reaction: float | None = Field(default=None, gt=0, description="the journey's ceiling, if any")


class ChannelRank(BaseModel):
    """One channel's place in the ranking, with its numbers and reason."""

    channel: ChannelName
    p_reaction: float
    cost: float
    expected_cost_per_reaction: float
    reason: str


class ChooseChannelResult(BaseModel):
    """The channel chosen (None: no usable channel left) and why."""

    chosen: ChannelName | None
    summary: str
    ranked: list[ChannelRank] = Field(default_factory=list)
    unusable: dict[str, str] = Field(default_factory=dict, description="channel -> why it cannot be used")
    over_ceiling: dict[str, str] = Field(
        default_factory=dict, description="channel -> why it is too dear for max_cost_per_reaction"
    )
    explored: bool = False
    model_version: str


class ChooseWaitInput(BaseModel):
    """How long to wait for `reaction` on a message sent on `channel` to the customer."""

    customer_id: str = Field(min_length=1, max_length=128)
    channel: ChannelName
    reaction: Reaction = Reaction.OPENED
    bounds: AdaptiveWait
    at: AwareDatetime


class ChooseWaitResult(BaseModel):
    """The wait and where it came from."""

    wait: timedelta
    source: str
    reason: str


class ChooseSendTimeInput(BaseModel):
    """The best moment in `[at, at + window]` to send on `channel` to the customer."""

    customer_id: str = Field(min_length=1, max_length=128)
    channel: ChannelName
    window: timedelta
    quiet_hours: QuietHours | None = None
    at: AwareDatetime


class ChooseSendTimeResult(BaseModel):
    """When to send and why (`send_at` may be `at` itself)."""

    send_at: AwareDatetime
    source: str
    reason: str
