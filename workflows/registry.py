"""Every workflow the worker runs, in one list: the worker registers it and the replay tests
replay recorded histories against it (a module of workflow code only, so the replay tests
can import it inside the workflow sandbox, where the worker module cannot go)."""

from workflows.analytics import AnalyticsRefresh
from workflows.broadcast import BroadcastWorkflow
from workflows.cascade import CascadeJourney
from workflows.loyalty import LoyaltyLoop
from workflows.scans import BirthdayScan, WinbackScan
from workflows.segments import SegmentRefresh

WORKFLOWS = (
    CascadeJourney,
    LoyaltyLoop,
    BirthdayScan,
    WinbackScan,
    BroadcastWorkflow,
    SegmentRefresh,
    AnalyticsRefresh,
)
