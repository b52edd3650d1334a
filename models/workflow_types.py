"""The Temporal workflow type names, for code that starts or queries a workflow by name.

Domain services and the API start journeys by these names rather than by importing the
workflow classes, so dependencies point one way (entry points -> workflows -> activities
-> services) and a service never imports a workflow. tests/test_architecture.py checks
the names still match the classes the worker registers.
"""

CASCADE_JOURNEY = "CascadeJourney"
LOYALTY_LOOP = "LoyaltyLoop"
BIRTHDAY_SCAN = "BirthdayScan"
WINBACK_SCAN = "WinbackScan"
BROADCAST_WORKFLOW = "BroadcastWorkflow"
SEGMENT_REFRESH = "SegmentRefresh"
ANALYTICS_REFRESH = "AnalyticsRefresh"

#: The query every journey-like workflow answers with its state.
STATE_QUERY = "state"
